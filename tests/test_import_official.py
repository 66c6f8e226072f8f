"""Importing the authors' released checkpoints (scaleprotoseg.import_official) without the real files.

The test writes stand-ins of the released code: classes with the released module paths, class names,
attribute names and tensor layouts (ProtoSeg `PPNet`, ScaleProtoSeg `PPNetMultiScale` of stage 1 and of the
group stage, `MSC`, the DeepLab fork's `DeepLabV2` / `_ASPP` / ResNet blocks and `UNetASPP`, the
`encoding` package's SyncBatchNorm), at tiny sizes. They are registered in `sys.modules` only while a
model is built and pickled the way the released trainer saves it (`torch.save(model)`, zip or legacy
format, storages tagged `cuda:0`), then removed, so the importer can only read the file as data.

Trunk: the head mappings (prototypes, class and scale tables, de-duplication, groups, thresholds) run
on a tiny released-layout `UNetASPP` (the EM trunk; widths shrunk, mapped onto our `unet` backbone). The
paper's DeepLab-v2 ResNet-101 trunk is mapped in one test at full size on a 33 × 33 input.

Each import is checked against a naive float64 forward of the stand-in written here: its own modules for
the trunk, then a loop over prototypes for the distances, similarities, last layer or groups.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaleprotoseg.config import load_config
from scaleprotoseg.errors import ArtifactError
from scaleprotoseg.import_official import import_released, main
from scaleprotoseg.models.build import load_model
from scaleprotoseg.released.unpickle import UnsafeCheckpointError

CLASSES = ["background", "square", "stripe"]
K, M, D, G, WIDTH, SIDE = 3, 2, 4, 2, 2, 32
RATES, SCALES = [2, 4, 6, 8], [0.5]  # U-Net inputs must stay divisible by 16 at every scale
RELEASED: dict[str, dict[str, type]] = {}  # fake module name → {class name: class}


def released(module: str, name: str | None = None):
    """Give a test class the released module path and name (and remember it for `released_code`)."""
    def mark(cls):
        cls.__module__, cls.__name__ = module, name or cls.__name__
        cls.__qualname__ = cls.__name__
        RELEASED.setdefault(module, {})[cls.__name__] = cls
        return cls
    return mark


@contextlib.contextmanager
def released_code():
    """The stand-in released packages, importable only inside the block."""
    names = set()
    for module, classes in RELEASED.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            names.add(".".join(parts[:i]))
    saved = {n: sys.modules.get(n) for n in names}
    for n in sorted(names):
        sys.modules[n] = types.ModuleType(n)
    for module, classes in RELEASED.items():
        for name, cls in classes.items():
            setattr(sys.modules[module], name, cls)
    try:
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


# ---------------------------------------------------------------------------------------------------------
# stand-ins of the released code (tiny sizes)

@released("encoding.nn.syncbn")
class SyncBatchNorm(nn.BatchNorm2d):
    pass


@released("deeplab_pytorch.libs.models.resnet")
class _ConvBnReLU(nn.Sequential):
    BATCH_NORM = nn.BatchNorm2d

    def __init__(self, in_ch, out_ch, kernel_size, stride, padding, dilation, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, bias=False))
        self.add_module("bn", _ConvBnReLU.BATCH_NORM(out_ch, eps=1e-5, momentum=0.001))
        if relu:
            self.add_module("relu", nn.ReLU())


@released("deeplab_pytorch.libs.models.resnet")
class _Bottleneck(nn.Module):
    def __init__(self, in_ch, out_ch, stride, dilation, downsample):
        super().__init__()
        mid = out_ch // 4
        self.reduce = _ConvBnReLU(in_ch, mid, 1, stride, 0, 1, True)
        self.conv3x3 = _ConvBnReLU(mid, mid, 3, 1, dilation, dilation, True)
        self.increase = _ConvBnReLU(mid, out_ch, 1, 1, 0, 1, False)
        self.shortcut = _ConvBnReLU(in_ch, out_ch, 1, stride, 0, 1, False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


@released("deeplab_pytorch.libs.models.resnet")
class _ResLayer(nn.Sequential):
    def __init__(self, n_layers, in_ch, out_ch, stride, dilation):
        super().__init__()
        for i in range(n_layers):
            self.add_module(f"block{i + 1}", _Bottleneck(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1,
                                                         dilation, i == 0))


@released("deeplab_pytorch.libs.models.resnet")
class _Stem(nn.Sequential):
    def __init__(self, out_ch):
        super().__init__()
        self.add_module("conv1", _ConvBnReLU(3, out_ch, 7, 2, 3, 1))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class _ASPPBase(nn.Module):
    def __init__(self, in_ch, out_ch, rates):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_ch, out_ch, 3, 1, padding=rate, dilation=rate, bias=True))


@released("deeplab_pytorch.libs.models.deeplabv2", "_ASPP")
class ASPPSum(_ASPPBase):
    def forward(self, x):
        return sum(stage(x) for stage in self.children())


@released("deeplab_pytorch.libs.models.deeplabv2_multiscale", "_ASPP")
class ASPPConcat(_ASPPBase):
    def forward(self, x):
        return torch.cat([stage(x) for stage in self.children()], dim=1)


def _deeplab(aspp_cls, n_classes, rates):
    class DeepLabV2(nn.Sequential):
        def __init__(self):
            super().__init__()
            ch = [64 * 2**p for p in range(6)]
            self.add_module("layer1", _Stem(ch[0]))
            self.add_module("layer2", _ResLayer(3, ch[0], ch[2], 1, 1))
            self.add_module("layer3", _ResLayer(4, ch[2], ch[3], 2, 1))
            self.add_module("layer4", _ResLayer(23, ch[3], ch[4], 1, 2))
            self.add_module("layer5", _ResLayer(3, ch[4], ch[5], 1, 4))
            self.add_module("aspp", aspp_cls(ch[5], n_classes, rates))
    return DeepLabV2


DeepLabV2Sum = released("deeplab_pytorch.libs.models.deeplabv2", "DeepLabV2")(_deeplab(ASPPSum, D, RATES))
DeepLabV2Concat = released("deeplab_pytorch.libs.models.deeplabv2_multiscale", "DeepLabV2")(_deeplab(ASPPConcat, D, RATES))


@released("deeplab_pytorch.libs.models.unet")
class DoubleConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x):
        return self.double_conv(x)


@released("deeplab_pytorch.libs.models.unet")
class Down(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


@released("deeplab_pytorch.libs.models.unet")
class Up(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.shape[2] - x1.shape[2], x2.shape[3] - x1.shape[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


@released("deeplab_pytorch.libs.models.unet")
class OutConv(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


@released("deeplab_pytorch.libs.models.unet")
class UNetASPP(nn.Module):
    """The released EM trunk with its widths 64…1024 shrunk to WIDTH…16·WIDTH (its 64 outputs kept)."""

    def __init__(self, n_channels, out_features, n_classes, rates, multiscale=False, width=WIDTH):
        super().__init__()
        w = [width * 2**i for i in range(5)]
        self.inc = DoubleConv(n_channels, w[0])
        for i in range(1, 5):
            setattr(self, f"down{i}", Down(w[i - 1], w[i]))
            setattr(self, f"up{i}", Up(w[5 - i], w[4 - i]))
        self.outc = OutConv(w[0], out_features)
        self.aspp = (ASPPConcat if multiscale else ASPPSum)(out_features, n_classes, rates)

    def forward(self, x):
        xs = [self.inc(x)]
        for i in range(1, 5):
            xs.append(getattr(self, f"down{i}")(xs[-1]))
        y = xs.pop()
        for i in range(1, 5):
            y = getattr(self, f"up{i}")(y, xs.pop())
        return self.aspp(self.outc(y))


@released("segmentation.utils")
class MSC(nn.Module):
    def __init__(self, base, scales=None):
        super().__init__()
        self.base, self.scales = base, scales

    def forward(self, x):
        out = self.base(x)
        if not self.scales:
            return out
        outs = [out] + [F.interpolate(self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)),
                                      size=out.shape[2:], mode="bilinear", align_corners=False) for p in self.scales]
        return torch.max(torch.stack(outs), dim=0)[0]


class _ProtoNet(nn.Module):
    """What PPNet and PPNetMultiScale (stage 1) hold, and the push's removal of prototypes."""

    def __init__(self, features, num_classes, prototype_shape, num_scales=None):
        super().__init__()
        P = prototype_shape[0]
        self.img_size, self.epsilon, self.prototype_activation_function = SIDE, 1e-4, "log"
        self.bottleneck_stride, self.patch_classification = 1, True
        self.prototype_vectors = nn.Parameter(torch.rand(prototype_shape))
        self.prototype_class_identity = torch.zeros(P, num_classes)
        S = num_scales or 1
        per = P // num_classes // S
        for s in range(S):
            for c in range(num_classes):
                lo = s * (P // S) + c * per
                self.prototype_class_identity[lo:lo + per, c] = 1
        if num_scales:
            self.num_scales, self.scale_head = num_scales, None
            self.scale_num_prototypes = {s: (s * P // S, (s + 1) * P // S) for s in range(S)}
        self.proto_layer_rf_info = [8, 1, 1, 0.5]
        self.features = features
        self.add_on_layers = nn.Sequential(nn.Sigmoid())
        self.ones = nn.Parameter(torch.ones(prototype_shape), requires_grad=False)
        self.last_layer = nn.Linear(P, num_classes, bias=False)

    def remove(self, drop):
        keep = [i for i in range(self.prototype_vectors.shape[0]) if i not in set(drop)]
        if hasattr(self, "scale_num_prototypes"):
            start = 0
            for s in range(self.num_scales):
                lo, hi = self.scale_num_prototypes[s]
                n = len([i for i in keep if lo <= i < hi])
                self.scale_num_prototypes[s] = (start, start + n)
                start += n
        self.prototype_vectors = nn.Parameter(self.prototype_vectors.data[keep])
        self.ones = nn.Parameter(self.ones.data[keep], requires_grad=False)
        self.last_layer.weight.data = self.last_layer.weight.data[:, keep]
        self.last_layer.in_features = len(keep)
        self.prototype_class_identity = self.prototype_class_identity[keep]


PPNet = released("segmentation.model.model", "PPNet")(type("PPNet", (_ProtoNet,), {}))
PPNetMultiScale = released("segmentation.model.model_multiscale", "PPNetMultiScale")(type("P", (_ProtoNet,), {}))


@released("segmentation.model.model_multiscale_group", "PPNetMultiScale")
class PPNetGroup(nn.Module):
    """Stage 2 as the released group trainer builds it from a stage-1 model: tables copied, one
    group projection per class with prototypes, a group head, no stage-1 last layer."""

    def __init__(self, stage1, num_groups):
        super().__init__()
        for key in ("img_size", "epsilon", "prototype_activation_function", "bottleneck_stride", "patch_classification",
                    "num_scales", "scale_head", "proto_layer_rf_info"):
            setattr(self, key, getattr(stage1, key))
        self.num_groups, self.incorrect_strength = num_groups, -0.5
        self.prototype_vectors, self.ones = stage1.prototype_vectors, stage1.ones
        self.features, self.add_on_layers = stage1.features, stage1.add_on_layers
        self.prototype_class_identity = stage1.prototype_class_identity
        self.scale_num_prototypes = stage1.scale_num_prototypes
        present = [c for c in range(K) if self.prototype_class_identity[:, c].sum() > 0]
        self.group_projection = nn.ModuleList(nn.Linear(int(self.prototype_class_identity[:, c].sum()), num_groups,
                                                        bias=False) for c in present)
        self.group_class_identity = torch.zeros(len(present) * num_groups, K)
        for k, c in enumerate(present):
            self.group_class_identity[k * num_groups:(k + 1) * num_groups, c] = 1
        self.last_layer_group = nn.Linear(len(present) * num_groups, K, bias=False)
        with torch.no_grad():
            for proj in self.group_projection:  # rows on the simplex
                proj.weight.copy_(torch.softmax(3 * torch.randn_like(proj.weight), dim=1))
            self.last_layer_group.weight.copy_(self.group_class_identity.T * 1.5 - 0.5 + 0.1 * torch.randn(K, len(present) * G))

    def threshold(self, t):
        for proj in self.group_projection:
            proj.weight.data[proj.weight.data < t] = 0


# ---------------------------------------------------------------------------------------------------------
# building, saving, naive reference


def randomise(model, seed, side):
    """A trained-looking trunk: BatchNorm affine parameters away from 1 and 0, running statistics those of
    random images (as training leaves them: activations stay O(1) through the 33 ResNet blocks), ASPP
    weights of unit gain so the sigmoid features spread over (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    feats = model.features
    norms = [m for m in feats.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in norms:
            bn.weight.copy_(1 + 0.1 * torch.randn(bn.weight.shape, generator=gen))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration pass
        feats.train()(torch.randn(2, 3, side, side, generator=gen))
        for bn in norms:
            bn.momentum = 0.001
        for name, t in feats.named_parameters():
            if ".aspp." in f".{name}":
                t.copy_(torch.randn(t.shape, generator=gen) * ((1 / t[0].numel()) ** 0.5 if t.dim() == 4 else 0.2))
    return model.eval()


def stage1(kind="scaleprotoseg", seed=0, scales=SCALES, trunk="unet", side=SIDE):
    torch.manual_seed(seed)
    multi = kind == "scaleprotoseg"
    if trunk == "unet":
        base = UNetASPP(3, 64, D, RATES, multiscale=multi)
    else:
        base = (DeepLabV2Concat if multi else DeepLabV2Sum)()
    S = len(RATES) if multi else 1
    cls = PPNetMultiScale if multi else PPNet
    return randomise(cls(MSC(base, scales), K, (K * S * M, D, 1, 1), len(RATES) if multi else None), seed, side)


def push_dedup(model, copies):
    """Make prototype q a copy of p for each (p, q), then drop the later copies, as the released push does."""
    with torch.no_grad():
        for p, q in copies:
            model.prototype_vectors[q] = model.prototype_vectors[p]
    vectors = model.prototype_vectors.detach().flatten(1).numpy()
    _, first = np.unique(vectors, axis=0, return_index=True)
    model.remove([i for i in range(len(vectors)) if i not in set(first.tolist())])
    return model


def save(obj, path, legacy=False, cuda=True):
    """`torch.save` as the released trainer does, the storages tagged as recorded on `cuda:0`."""
    with released_code(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy format's "couldn't retrieve source code" of the stand-ins
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    if cuda:
        old, new = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"
        if legacy:
            data = path.read_bytes()
            assert old in data
            path.write_bytes(data.replace(old, new))
        else:
            with zipfile.ZipFile(path) as zf:
                records = {n: zf.read(n) for n in zf.namelist()}
            pkl = next(n for n in records if n.endswith("data.pkl"))
            assert old in records[pkl]
            records[pkl] = records[pkl].replace(old, new)
            with zipfile.ZipFile(path, "w") as zf:
                for n, data in records.items():
                    zf.writestr(n, data)
    assert "segmentation.model.model" not in sys.modules
    return path


def naive_logits(model, x):
    """The released forward in float64: the stand-in's own modules up to the features, then loops."""
    m = model.double().eval()  # in place: the stand-in is not used in float32 afterwards
    with torch.no_grad():
        f = torch.sigmoid(m.features(x.double()))[0]
        V = m.prototype_vectors.flatten(1)
        ident = m.prototype_class_identity
        sims = torch.empty(V.shape[0], *f.shape[1:], dtype=torch.float64)
        for s, (lo, hi) in getattr(m, "scale_num_prototypes", {0: (0, V.shape[0])}).items():
            fs = f[s * V.shape[1]:(s + 1) * V.shape[1]]
            for p in range(lo, hi):
                d = ((fs - V[p][:, None, None]) ** 2).sum(0)
                sims[p] = torch.log((d + 1) / (d + 1e-4))
        if not hasattr(m, "group_projection"):
            return torch.einsum("phw,kp->khw", sims, m.last_layer.weight)
        acts = []
        present = [c for c in range(K) if ident[:, c].sum() > 0]
        for k, c in enumerate(present):
            mine = torch.nonzero(ident[:, c]).flatten()
            for row in m.group_projection[k].weight:
                acts.append(torch.exp((row[:, None, None] * sims[mine]).sum(0)))
        return torch.einsum("ghw,kg->khw", torch.stack(acts), m.last_layer_group.weight)


def config(params, method, **extra):
    over = {"presets.embedded.model.backbone": "unet", "presets.embedded.model.width": WIDTH,
            "presets.embedded.model.aspp_rates": RATES, "presets.embedded.model.msc_scales": SCALES,
            "presets.embedded.scaleprotoseg_groups.groups": G, "experiment.device": "cpu"}
    for m in ("protoseg", "scaleprotoseg"):
        over.update({f"presets.embedded.{m}.prototypes": M, f"presets.embedded.{m}.features": D})
    over.update({f"presets.embedded.{k}": v for k, v in extra.items()})
    return load_config(params, "embedded", method, over)


def check_import(tmp_path, standin, cfg, src, side=SIDE, seed=1):
    """Import `src`, load it with the public loader, compare its float64 logits with the naive forward."""
    out = tmp_path / "imported.pt"
    summary = import_released(src, out, cfg, CLASSES)
    assert "segmentation.model.model_multiscale" not in sys.modules  # nothing of the released code was imported
    model, _, payload = load_model(out, expect=cfg, classes=CLASSES)
    assert payload["phase"] == "released" and payload["released"]["method"] == cfg.method
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ours = model.double().predict_logits(x.double())[0]
    ref = naive_logits(standin, x)
    assert ours.shape == ref.shape
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-6
    return summary, model


@pytest.fixture(scope="module")
def saved_stage1(tmp_path_factory):
    """One ScaleProtoSeg stand-in saved in both formats, for the tests that only need a valid file."""
    folder = tmp_path_factory.mktemp("released")
    net = stage1("scaleprotoseg")
    return {"zip": save(net, folder / "model.pth"), "legacy": save(net, folder / "model_legacy.pth", legacy=True)}


# ---------------------------------------------------------------------------------------------------------
# the three released model kinds


def test_protoseg_legacy_format_pruned(params, tmp_path):
    """ProtoSeg (summed ASPP, one scale), pruned to uneven class counts, legacy format recorded on cuda:0."""
    net = stage1("protoseg")
    net.remove([1, 4, 5])  # class-major idx c·M + m: class 0 keeps 1 of its 2, class 1 both, class 2 none
    src = save(net, tmp_path / "protoseg.pth", legacy=True)
    summary, model = check_import(tmp_path, net, config(params, "protoseg"), src)
    assert summary["format"] == "legacy" and summary["recorded_on"] == ["cuda:0"]
    assert summary["released_class"] == "segmentation.model.model.PPNet"
    # the exact file a result used: its checksum and size, computed independently here
    import hashlib

    assert summary["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and summary["bytes"] == len(src.read_bytes())
    assert model.prototypes.proto_class.tolist() == [0, 1, 1] and summary["counts_per_scale_class"] == [[1, 2, 0]]


@pytest.mark.parametrize("dedup", [False, True], ids=["as-built", "de-duplicated"])
def test_scaleprotoseg_before_and_after_deduplication(params, tmp_path, dedup):
    net = stage1("scaleprotoseg")
    if dedup:  # idx(s, c, m) = s·K·M + c·M + m: a copy within class 0 at scale 0, one across classes at scale 2
        push_dedup(net, [(0, 1), (2 * K * M + 2, 2 * K * M + 5)])
    src = save(net, tmp_path / "scaleproto.pth", cuda=dedup)
    summary, model = check_import(tmp_path, net, config(params, "scaleprotoseg"), src)
    assert summary["format"] == "zip" and summary["recorded_on"] == (["cuda:0"] if dedup else ["cpu"])
    assert summary["prototypes"] == K * len(RATES) * M - (2 if dedup else 0)
    assert summary["de_duplicated"] is dedup
    expected_scale = [s for s, (lo, hi) in net.scale_num_prototypes.items() for _ in range(hi - lo)]
    assert model.prototypes.proto_scale.tolist() == expected_scale
    assert model.prototypes.proto_class.tolist() == net.prototype_class_identity.argmax(1).tolist()


@pytest.mark.parametrize("thresholded", [False, True], ids=["before-threshold", "thresholded"])
def test_groups_before_and_after_threshold(params, tmp_path, thresholded):
    """Groups on a de-duplicated stage 1 where class 1 lost every prototype to copies of class 0's (its groups
    do not exist: the released group head's columns skip it) and class 2 one of its own."""
    net = stage1("scaleprotoseg", seed=3)
    push_dedup(net, [(s * K * M + m, s * K * M + M + m) for s in range(len(RATES)) for m in range(M)] + [(4, 5)])
    torch.manual_seed(4)
    groups = PPNetGroup(net, G).eval()
    if thresholded:
        groups.threshold(0.2)
    src = save(groups, tmp_path / "groups.pth", legacy=thresholded)
    summary, _ = check_import(tmp_path, groups, config(params, "scaleprotoseg_groups"), src)
    assert len(groups.group_projection) == 2 and summary["groups"] == G
    zeros = sum(int((p.weight == 0).sum()) for p in groups.group_projection)
    assert (zeros > 0) is thresholded and summary["prototypes_used"] == int(
        sum((p.weight != 0).any(0).sum() for p in groups.group_projection))
    if thresholded:
        assert summary["smallest_nonzero_group_weight"] >= 0.2


def test_state_dict_full_count_accepted_deduplicated_refused(params, tmp_path):
    cfg = config(params, "scaleprotoseg")
    net = stage1("scaleprotoseg", seed=6)
    src = save(net.state_dict(), tmp_path / "full_state.pth")
    summary, _ = check_import(tmp_path, net, cfg, src)
    assert summary["released_class"] == "state_dict"
    push_dedup(net, [(0, 1)])
    src = save(net.state_dict(), tmp_path / "dedup_state.pth")
    with pytest.raises(ArtifactError, match=r"dedup_state\.pth.*23 prototypes.*the pickled module is needed"):
        import_released(src, tmp_path / "x.pt", cfg, CLASSES)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow  # a full-size ResNet-101 built, saved, imported and run twice (a few seconds)
def test_paper_trunk_resnet101_with_encoding_syncbatchnorm(params, tmp_path, monkeypatch):
    """The released DeepLab-v2 ResNet-101 (Caffe layout, `encoding` SyncBatchNorm) maps onto our resnet101."""
    monkeypatch.setattr(_ConvBnReLU, "BATCH_NORM", SyncBatchNorm)
    net = stage1("scaleprotoseg", seed=7, scales=[], trunk="deeplab", side=33)
    assert any(isinstance(m, SyncBatchNorm) for m in net.modules())
    src = save(net, tmp_path / "resnet.pth", cuda=False)
    cfg = config(params, "scaleprotoseg", **{"model.backbone": "resnet101", "model.msc_scales": []})
    summary, _ = check_import(tmp_path, net, cfg, src, side=33)
    assert summary["trunk"] == "deeplab" and summary["mapping"]["features.base.layer4.block23.conv3x3.bn.running_var"] \
        == "backbone.layer4.block23.conv3x3.bn.running_var"


# ---------------------------------------------------------------------------------------------------------
# refusals


class Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def marker_writer(path):  # a plain function of the test module: not a tensor rebuilder either
    open(path, "w").close()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "subprocess.Popen", "function", "inside-model"])
def test_malicious_pickle_is_refused_and_never_runs(params, tmp_path, how, legacy):
    marker = tmp_path / "ran"
    payload = {"os.system": Payload(os.system, f"touch {marker}"),
               "builtins.eval": Payload(eval, f"open({str(marker)!r}, 'w')"),
               "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
               "function": Payload(marker_writer, str(marker))}.get(how)
    if payload is None:  # a released-looking model carrying the call in an attribute
        payload = stage1("protoseg")
        payload.note = Payload(os.system, f"touch {marker}")
    src = tmp_path / "evil.pth"
    with released_code(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(payload, src, _use_new_zipfile_serialization=not legacy)
    named = {"os.system": "system", "builtins.eval": "eval", "subprocess.Popen": "subprocess.Popen",
             "function": "marker_writer", "inside-model": "system"}[how]
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pth: refused to load.*{named}.*nothing from the file was run"):
        import_released(src, tmp_path / "out.pt", config(params, "protoseg"), CLASSES)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    if how == "function":  # the payload is live: the ordinary loader runs it
        torch.load(src, weights_only=False)
        assert marker.exists()


def test_a_payload_reached_only_through_an_inert_class_is_recorded_not_run(tmp_path):
    """REDUCE with a released class (a stand-in) records its arguments; the stand-in has no behaviour."""
    from scaleprotoseg.released.unpickle import Inert, read_checkpoint

    src = tmp_path / "obj.pth"
    with released_code():
        torch.save({"x": Payload(MSC, "touch", str(tmp_path / "ran"))}, src)
    obj = read_checkpoint(src).obj["x"]
    assert isinstance(obj, Inert) and type(obj).qualname() == "segmentation.utils.MSC"
    assert obj._args == ("touch", str(tmp_path / "ran")) and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, -16], ids=["half", "last-bytes"])
def test_truncated_file_is_named(params, tmp_path, saved_stage1, legacy, keep):
    data = saved_stage1["legacy" if legacy else "zip"].read_bytes()
    src = tmp_path / "cut.pth"
    src.write_bytes(data[: int(len(data) * keep) if keep > 0 else keep])
    with pytest.raises(ArtifactError, match=r"cut\.pth is truncated or corrupt.*download it again"):
        import_released(src, tmp_path / "out.pt", config(params, "scaleprotoseg"), CLASSES)


@pytest.mark.parametrize("change, match", [
    ({"classes": CLASSES + ["extra"]}, r"class count mismatch: the file has 3 classes.*has 4"),
    ({"scaleprotoseg.prototypes": 1}, r"prototype count mismatch: class 0 \(background\) has 2 .*prototypes \(per class and scale\) is 1"),
    ({"model.aspp_rates": [2, 4, 6]}, r"scale count mismatch: the file has 4 ASPP branches.*aspp_rates has 3"),
    ({"scaleprotoseg.features": 8}, r"prototype dimension mismatch.*features is 8"),
    ({"model.msc_scales": []}, r"multi-scale inputs at \[0.5\].*msc_scales is \[\]"),
    ({"method": "protoseg"}, r"holds a scaleprotoseg model \(segmentation.model.model_multiscale.PPNetMultiScale\); --method is protoseg"),
    ({"model.backbone": "small"}, r"maps onto model.backbone 'unet'.*backbone is 'small'"),
])
def test_other_method_or_dataset_is_refused_naming_what_differs(params, tmp_path, saved_stage1, change, match):
    src = saved_stage1["zip"]
    change = dict(change)
    classes = change.pop("classes", CLASSES)
    cfg = config(params, change.pop("method", "scaleprotoseg"), **change)
    with pytest.raises(ArtifactError, match=match):
        import_released(src, tmp_path / "out.pt", cfg, classes)


def test_command_line(params, tmp_path, saved_stage1, tiny_dataset, capsys):
    src = saved_stage1["legacy"]
    sets = [f"presets.embedded.{k}={v}" for k, v in {
        "model.backbone": "unet", "model.width": WIDTH, "model.aspp_rates": RATES, "model.msc_scales": SCALES,
        "scaleprotoseg.prototypes": M, "scaleprotoseg.features": D}.items()]
    argv = [str(src), str(tmp_path / "cli.pt"), "--dataset", "embedded", "--method", "scaleprotoseg",
            "--data", str(tiny_dataset), *[a for s in sets for a in ("-S", s)]]
    assert main(argv) == 0
    assert '"released_class": "segmentation.model.model_multiscale.PPNetMultiScale"' in capsys.readouterr().out
    assert main(argv[:-len(sets) * 2]) == 1  # the repository's embedded preset has the `small` backbone
    assert "model.backbone 'unet'" in capsys.readouterr().err


def test_a_grouped_file_read_as_scaleprotoseg_gives_its_stage1_model(params, tmp_path):
    """The grouped file holds the stage-1 trunk and prototypes (no stage-1 last layer): read as
    `scaleprotoseg`, the group head is set aside and the last layer is the class connection (1 for its own
    class, -0.5 for the others, as the released models initialise it); checked against the naive forward."""
    net = stage1("scaleprotoseg", seed=6)
    torch.manual_seed(7)
    groups = PPNetGroup(net, G).eval()
    src = save(groups, tmp_path / "groups.pth")
    stage1_standin = stage1("scaleprotoseg", seed=6)  # the same weights, without the group head
    with torch.no_grad():
        own = stage1_standin.prototype_class_identity.T  # (K, P)
        stage1_standin.last_layer.weight.copy_(own - 0.5 * (1 - own))
    summary, _ = check_import(tmp_path, stage1_standin, config(params, "scaleprotoseg"), src)
    assert any(v.startswith("(set aside") for v in summary["mapping"].values())


@pytest.mark.slow
def test_dvc_repro_evaluates_a_released_model_end_to_end(tmp_path):
    """`presets.<dataset>.<method>.released` set: `dvc repro` imports the file instead of training, keeps the
    released prototypes through projection, thresholds and evaluates the grouped model."""
    import shutil

    import yaml

    from .layouts import write_folder
    from .repo_copy import copy_repository

    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    repo = copy_repository(tmp_path / "repo")
    write_folder(repo / "data" / "folder", n=8, h=32, w=32)
    net = stage1("scaleprotoseg", seed=5)
    torch.manual_seed(6)
    groups = PPNetGroup(net, G).eval()
    (repo / "released").mkdir()
    save(groups, repo / "released" / "groups.pth")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    seed = params["experiment"]["seeds"][0]
    params["experiment"].update(dataset="folder", methods=["scaleprotoseg"], groups=["scaleprotoseg_groups"],
                                device="cpu", export=[])
    params["data_sources"]["folder"]["root"] = "data/folder"
    preset = params["presets"]["folder"]
    preset["model"] = {"backbone": "unet", "width": WIDTH, "aspp_rates": RATES, "msc_scales": SCALES}
    preset["data"] = {"crop": 32, "eval_size": [32, 32]}
    preset["runtime"] = {"num_workers": 0, "val_images": 2}
    preset["eval"] = {"n_examples": 1}
    preset["scaleprotoseg"] = {"prototypes": M, "features": D, "released": "released/groups.pth"}
    preset["scaleprotoseg_groups"] = {"groups": G, "released": "released/groups.pth"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], [*env, "commit", "-qm", "released"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    run_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([dvc, "repro", f"evaluate_groups@scaleprotoseg_groups-{seed}"], cwd=repo, capture_output=True,
                         text=True, timeout=900, env=run_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for m in ("scaleprotoseg", "scaleprotoseg_groups"):
        summary = yaml.safe_load((repo / f"artifacts/train/folder/{m}/seed-{seed}/train_summary.json").read_text())
        assert summary["steps"] == 0 and summary["released"] == "released/groups.pth"
    projected, _, _ = load_model(repo / f"artifacts/project/folder/scaleprotoseg/seed-{seed}/model.pt")
    released_vectors = groups.prototype_vectors.detach().flatten(1)
    assert torch.equal(projected.prototypes.vectors.detach(), released_vectors)  # kept as released, not re-projected
    metrics = yaml.safe_load((repo / f"reports/evaluate/folder/scaleprotoseg_groups/seed-{seed}/metrics.json").read_text())
    evaluated = yaml.safe_load((repo / f"reports/evaluate/folder/scaleprotoseg_groups/seed-{seed}/summary.json").read_text())
    assert 0 <= metrics["miou"] <= 100 and evaluated["images"] > 0
