"""The authors' released ProtoSeg / ScaleProtoSeg models, read as data (`unpickle`), mapped onto this
repository's `PrototypeSegmenter` state dict.

Facts of the released code (its `segmentation/model/` package and the DeepLab fork it builds on):

- Classes: ProtoSeg `segmentation.model.model.PPNet`; ScaleProtoSeg stage 1
  `segmentation.model.model_multiscale.PPNetMultiScale`; stage 2 (groups)
  `segmentation.model.model_multiscale_group.PPNetMultiScale`, recognised by its `group_projection`.
- `features`: `segmentation.utils.MSC` (`base`; `scales`, the extra input scales, where 1.0 is a no-op)
  around `deeplab_pytorch.libs.models.deeplabv2.DeepLabV2` (ASPP branches summed: ProtoSeg) or
  `deeplabv2_multiscale.DeepLabV2` (concatenated, branch i = scale i: ScaleProtoSeg), or `unet.UNetASPP`
  (EM). The DeepLab trunk is the Caffe-layout ResNet-101 that our `resnet101` reproduces name for name
  (`layerN.blockM.{reduce,conv3x3,increase,shortcut}.{conv,bn}`); its BatchNorm is `torch.nn.BatchNorm2d`
  or the `encoding` package's SyncBatchNorm (same tensors). ASPP `aspp.c<i>` is our `aspp.branches.<i>`.
- `add_on_layers`: a lone Sigmoid (`deeplab_simple`). `prototype_vectors` (P, D, 1, 1); `ones` (P, D, 1, 1),
  all ones, unused by the maths; stage 1 `last_layer` Linear weight (K, P).
- Not in the state dict (plain attributes of the pickled module): `prototype_class_identity` (P, K) one-hot
  and, multi-scale, `scale_num_prototypes` {s: (start, end)}. As built, prototype idx(s, c, m) =
  s·K·M + c·M + m (ProtoSeg c·M + m), our layout. The push de-duplicates (`np.unique` over the projected
  vectors, later copies removed from vectors, `ones`, last-layer columns and the class table, scale ranges
  shrunk): then P < K·S·M and only the tables say which prototype is which.
- Stage 2: `group_projection[k]` Linear weight (G, n_c) over class c's prototypes in ascending index, for
  the k-th class that has prototypes; `last_layer_group` weight (K, G·#classes with prototypes); the file
  has no stage-1 `last_layer`. Thresholding (`threshold_save.py`) zeroes weights < t in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import ArtifactError
from ..losses import class_slots
from ..models.prototypes import class_connection
from .unpickle import Inert, modules_of, tensors_of

KINDS = {"PPNet": "protoseg", "PPNetMultiScale": "scaleprotoseg"}
TRUNKS = {"DeepLabV2": ("deeplab", "resnet101"), "UNetASPP": ("unet", "unet")}
ASPP_MODES = {"deeplabv2": "sum", "deeplabv2_multiscale": "concat"}
METHOD_ASPP = {"protoseg": "sum", "scaleprotoseg": "concat", "scaleprotoseg_groups": "concat"}


@dataclass
class Released:
    """A released model as plain data: its tensors under their released names, and what the pickled
    module adds (absent for a bare state dict: tables None, `modules` empty)."""

    kind: str
    source: str  # the pickled class, or "state_dict"
    tensors: dict[str, torch.Tensor]
    trunk: str  # deeplab | unet
    base: str  # key prefix of the trunk and ASPP: "features.base." (inside MSC) or "features."
    proto_class: torch.Tensor | None = None
    proto_scale: torch.Tensor | None = None
    msc_scales: tuple[float, ...] | None = None
    aspp_mode: str | None = None
    group_class_identity: torch.Tensor | None = None
    table_classes: int | None = None  # columns of prototype_class_identity
    modules: dict[str, Inert] = field(default_factory=dict)


def _refuse(where, what: str) -> ArtifactError:
    return ArtifactError(f"{where}: {what}")


def _child(module: Inert, name: str) -> Inert | None:
    child = (module.attrs.get("_modules") or {}).get(name)
    return child if isinstance(child, Inert) else None


def describe(obj, where, method: str) -> Released:
    """What the file holds: a pickled released model (inert stand-ins) or a bare state dict (mapping of
    names to tensors; its method is `method`, the one asked for)."""
    if isinstance(obj, Inert):
        return _describe_module(obj, where)
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return _describe_state_dict(dict(obj), where, method)
    raise _refuse(where, f"holds a {type(obj).__name__}, neither a pickled released model nor a state dict of one.")


def _describe_module(root: Inert, where) -> Released:
    if type(root).pickled_as[1] in ("DataParallel", "DistributedDataParallel") and _child(root, "module"):
        root = _child(root, "module")
    cls_name = type(root).pickled_as[1]
    if cls_name not in KINDS:
        raise _refuse(where, f"holds a {type(root).qualname()}, not a released ProtoSeg / ScaleProtoSeg model "
                             f"(PPNet, PPNetMultiScale).")
    kind = "scaleprotoseg_groups" if _child(root, "group_projection") else KINDS[cls_name]
    attrs = root.attrs
    for key, expected in (("prototype_activation_function", "log"), ("epsilon", 1e-4), ("scale_head", None)):
        if key in attrs and attrs[key] != expected:
            raise _refuse(where, f"{key} is {attrs[key]!r}; the paper's models (and this code) use {expected!r}.")
    if "patch_classification" in attrs and not attrs["patch_classification"]:
        raise _refuse(where, "patch_classification is off: an image classifier, not a segmentation model.")
    mods = modules_of(root)
    add_on = [m for p, m in mods.items() if p.startswith("add_on_layers.")]
    if any(type(m).pickled_as[1] != "Sigmoid" for m in add_on):
        raise _refuse(where, "its add-on layers are not the lone sigmoid (`deeplab_simple`) of the paper's models.")
    features = _child(root, "features")
    if features is None:
        raise _refuse(where, "the model has no `features` module.")
    msc = type(features).pickled_as[1] == "MSC" and _child(features, "base") is not None
    base = _child(features, "base") if msc else features
    trunk = TRUNKS.get(type(base).pickled_as[1])
    if trunk is None:
        raise _refuse(where, f"its trunk is a {type(base).qualname()}; the paper's models use DeepLabV2 (ResNet-101) "
                             "or UNetASPP (EM).")
    aspp = _child(base, "aspp")
    mode = ASPP_MODES.get(type(aspp).pickled_as[0].rsplit(".", 1)[-1]) if aspp is not None else None
    if mode is None:
        raise _refuse(where, "its ASPP is neither the summed (deeplabv2) nor the concatenated (deeplabv2_multiscale) one.")
    identity = attrs.get("prototype_class_identity")
    if not isinstance(identity, torch.Tensor) or identity.dim() != 2:
        raise _refuse(where, "the pickled model has no prototype_class_identity table.")
    ones = identity.sum(1)
    if not (bool(((identity == 0) | (identity == 1)).all()) and bool((ones == 1).all())):
        raise _refuse(where, "prototype_class_identity is not one class per prototype.")
    proto_class = identity.argmax(1).long()
    if cls_name == "PPNet":
        proto_scale = torch.zeros_like(proto_class)
    else:
        proto_scale = _scale_table(attrs.get("scale_num_prototypes"), len(proto_class), where)
    scales = features.attrs.get("scales", []) if msc else []
    group_identity = attrs.get("group_class_identity")
    return Released(kind=kind, source=type(root).qualname(), tensors=tensors_of(root), trunk=trunk[0],
                    base="features.base." if msc else "features.", proto_class=proto_class, proto_scale=proto_scale,
                    msc_scales=tuple(float(s) for s in (scales or [])), aspp_mode=mode,
                    group_class_identity=group_identity if isinstance(group_identity, torch.Tensor) else None,
                    table_classes=identity.shape[1], modules=mods)


def _scale_table(table, num_prototypes: int, where) -> torch.Tensor:
    """`scale_num_prototypes` {s: (start, end)} → the scale of every prototype; the ranges must tile [0, P)."""
    if not isinstance(table, dict) or not table:
        raise _refuse(where, "the pickled multi-scale model has no scale_num_prototypes table.")
    out, start = [], 0
    for s in range(len(table)):
        lo, hi = (int(v) for v in table.get(s, (-1, -1)))
        if lo != start or hi < lo:
            raise _refuse(where, f"scale_num_prototypes {table} does not tile the {num_prototypes} prototypes.")
        out += [s] * (hi - lo)
        start = hi
    if start != num_prototypes:
        raise _refuse(where, f"scale_num_prototypes covers {start} prototypes, the file has {num_prototypes}.")
    return torch.tensor(out, dtype=torch.long)


def _describe_state_dict(tensors: dict, where, method: str) -> Released:
    for prefix in ("module.", "ppnet."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    base = "features.base." if any(k.startswith("features.base.") for k in tensors) else "features."
    if any(k.startswith(base + "layer1.") for k in tensors):
        trunk = "deeplab"
    elif any(k.startswith(base + "inc.") for k in tensors):
        trunk = "unet"
    else:
        raise _refuse(where, "a state dict without the released trunk (features.base.layer1… or features.base.inc…).")
    grouped = any(k.startswith("group_projection.") for k in tensors)
    if grouped != (method == "scaleprotoseg_groups"):
        what = "a grouped model (group_projection)" if grouped else "a stage-1 model (no group_projection)"
        raise _refuse(where, f"the state dict holds {what}; --method is {method}.")
    return Released(kind=method, source="state_dict", tensors=tensors, trunk=trunk, base=base)


def _aspp_key(k: str) -> str | None:
    m = re.fullmatch(r"aspp\.c(\d+)\.(\w+)", k)
    return f"aspp.branches.{m[1]}.{m[2]}" if m else None


def _deeplab_key(k: str) -> str | None:
    return "backbone." + k if k.startswith("layer") else _aspp_key(k)


def _unet_key(k: str) -> str | None:
    rules = ((r"inc\.double_conv\.(\d+)\.(\w+)", lambda m: f"backbone.down.0.{m[1]}.{m[2]}"),
             (r"down(\d+)\.maxpool_conv\.1\.double_conv\.(\d+)\.(\w+)", lambda m: f"backbone.down.{m[1]}.{m[2]}.{m[3]}"),
             (r"up(\d+)\.up\.(\w+)", lambda m: f"backbone.up.{int(m[1]) - 1}.{m[2]}"),
             (r"up(\d+)\.conv\.double_conv\.(\d+)\.(\w+)", lambda m: f"backbone.merge.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
             (r"outc\.conv\.(\w+)", lambda m: f"backbone.head.{m[1]}"))
    for pattern, name in rules:
        if m := re.fullmatch(pattern, k):
            return name(m)
    return _aspp_key(k)


def _counts_table(proto_class, proto_scale, K: int, S: int) -> torch.Tensor:
    return torch.bincount(proto_scale * K + proto_class, minlength=S * K).view(S, K)


def to_ours(rel: Released, cfg, classes: list[str], model, where) -> tuple[dict[str, torch.Tensor], dict]:
    """Our model's state dict from `rel`, after checking that every shape fits `cfg` and `classes` and that
    every tensor of the file is used; plus a report of what went where."""
    base_cfg = cfg.start if cfg.start is not None else cfg
    preset = f"presets.{cfg.dataset}"
    K, M, D = len(classes), base_cfg.train.prototypes, base_cfg.train.features
    S = len(cfg.model.aspp_rates) if model.multiscale else 1
    # a grouped file holds the whole stage-1 model too: read as scaleprotoseg, its group head is set aside
    stage1_of_groups = rel.kind == "scaleprotoseg_groups" and cfg.method == "scaleprotoseg"
    if rel.kind != cfg.method and not stage1_of_groups:
        raise _refuse(where, f"holds a {rel.kind} model ({rel.source}); --method is {cfg.method}.")
    backbone = TRUNKS["DeepLabV2" if rel.trunk == "deeplab" else "UNetASPP"][1]
    if cfg.model.backbone != backbone:
        raise _refuse(where, f"its trunk is the released {rel.trunk}, which maps onto model.backbone {backbone!r}; "
                             f"{preset}.model.backbone is {cfg.model.backbone!r}.")
    if rel.aspp_mode is not None and rel.aspp_mode != METHOD_ASPP[cfg.method]:
        verb = {"sum": "sums", "concat": "concatenates"}
        raise _refuse(where, f"its ASPP {verb[rel.aspp_mode]} the branches; {cfg.method} {verb[METHOD_ASPP[cfg.method]]} "
                             "them: not a model of this method.")
    if rel.msc_scales is not None:
        file_scales = sorted(s for s in rel.msc_scales if s != 1.0)
        if file_scales != sorted(cfg.model.msc_scales):
            raise _refuse(where, f"the model runs multi-scale inputs at {file_scales}; {preset}.model.msc_scales is "
                                 f"{list(cfg.model.msc_scales)}: set it to {file_scales} to evaluate it as released.")
    t = dict(rel.tensors)
    used: dict[str, str] = {}

    def take(name: str, ours: str) -> torch.Tensor:
        if name not in t:
            raise _refuse(where, f"has no tensor {name!r}; not a complete released {rel.kind} model.")
        used[name] = ours
        return t[name].detach()

    if stage1_of_groups:
        for k in t:
            if k.startswith(("group_projection.", "last_layer_group.")):
                used[k] = "(set aside: the stage-2 group head; read as the stage-1 model)"
    head = take("last_layer_group.weight", "group_head.head") if rel.kind == cfg.method == "scaleprotoseg_groups" else None
    last = (take("last_layer.weight", "last_layer") if "last_layer.weight" in t or (head is None and not stage1_of_groups)
            else None)
    rows = (head if head is not None else last if last is not None else t["last_layer_group.weight"]).shape[0]
    if rows != K or (rel.table_classes is not None and rel.table_classes != K):
        rows = rows if rows != K else rel.table_classes
        raise _refuse(where, f"class count mismatch: the file has {rows} classes, the prepared {cfg.dataset} data has "
                             f"{K} ({', '.join(classes[:4])}…): it is a model of another dataset.")
    vectors = take("prototype_vectors", "prototypes.vectors")
    P = vectors.shape[0]
    if vectors.dim() not in (2, 4) or vectors.shape[2:] not in ((), (1, 1)) or vectors.shape[1] != D:
        raise _refuse(where, f"prototype dimension mismatch: prototype_vectors is {tuple(vectors.shape)}; "
                             f"{preset}.{base_cfg.method}.features is {D}.")
    ones = take("ones", "(checked: all ones, not needed)") if "ones" in t else None
    if ones is not None and (ones.shape != vectors.shape or not bool((ones == 1).all())):
        raise _refuse(where, "its `ones` tensor is not all ones of the prototypes' shape; not a released model.")
    branches = sum(1 for k in t if re.fullmatch(re.escape(rel.base) + r"aspp\.c\d+\.weight", k))
    if branches != len(cfg.model.aspp_rates):
        raise _refuse(where, f"scale count mismatch: the file has {branches} ASPP branches; {preset}.model.aspp_rates "
                             f"has {len(cfg.model.aspp_rates)}.")
    proto_class, proto_scale = rel.proto_class, rel.proto_scale
    if proto_class is None:  # a bare state dict: only the layout as built is knowable
        if P != K * S * M:
            raise _refuse(where, f"a state dict with {P} prototypes, not the full K·S·M = {K}·{S}·{M} = {K * S * M}: "
                                 "after the released push's de-duplication the class and scale of each prototype "
                                 "are only in the pickled module (prototype_class_identity, scale_num_prototypes); "
                                 "the pickled module is needed.")
        idx = torch.arange(P)
        proto_class, proto_scale = (idx % (K * M)) // M, idx // (K * M)
    if len(proto_class) != P or (len(proto_scale) and int(proto_scale.max()) >= S):
        n_scales = int(proto_scale.max()) + 1 if len(proto_scale) else 0
        raise _refuse(where, f"scale count mismatch: {len(proto_class)} class entries and {n_scales} scales for {P} "
                             f"prototypes; {cfg.method} here has {S} scale(s) ({preset}.model.aspp_rates).")
    counts = _counts_table(proto_class, proto_scale, K, S)
    if int(counts.max()) > M:
        s, c = divmod(int(counts.argmax()), K)
        per = "per class and scale" if S > 1 else "per class"
        raise _refuse(where, f"prototype count mismatch: class {c} ({classes[c]}) has {int(counts.max())} prototypes"
                             f"{f' at scale {s}' if S > 1 else ''}; {preset}.{base_cfg.method}.prototypes ({per}) is {M}.")
    state: dict[str, torch.Tensor] = {
        "prototypes.vectors": vectors.reshape(P, D).float().clone(),
        "prototypes.proto_class": proto_class.long().clone(),
        "prototypes.proto_scale": proto_scale.long().clone(),
    }
    if last is not None and tuple(last.shape) != (K, P):
        raise _refuse(where, f"last_layer.weight is {tuple(last.shape)}, ({K}, {P}) expected.")
    state["last_layer"] = last.float().clone() if last is not None else class_connection(proto_class, K)
    if head is not None:
        state.update(_groups(rel, t, take, head, proto_class, cfg, where, K))
    state.update(_trunk(rel, t, take, model, where))
    left = sorted(set(t) - set(used))
    if left:
        raise _refuse(where, f"{len(left)} tensor(s) of the file have no place in {cfg.method}: {', '.join(left[:6])}"
                             f"{'…' if len(left) > 6 else ''}.")
    report = {"prototypes": P, "prototypes_full": K * S * M, "classes": K, "scales": S,
              "counts_per_scale_class": counts.tolist(), "mapping": used}
    return state, report


def _groups(rel: Released, t, take, head, proto_class, cfg, where, K: int) -> dict[str, torch.Tensor]:
    """The group head: per class with prototypes its (G, n_c) weights into our padded (K, G, n_max) layout;
    `last_layer_group`'s columns into our (K, K·G) head (columns of classes without prototypes stay 0, as
    those groups do not exist in the released model)."""
    G = cfg.train.groups
    present = [c for c in range(K) if int((proto_class == c).sum()) > 0]
    blocks = sorted(int(m[1]) for k in t if (m := re.fullmatch(r"group_projection\.(\d+)\.weight", k)))
    if blocks != list(range(len(present))):
        raise _refuse(where, f"{len(blocks)} group projections for {len(present)} classes with prototypes.")
    index, valid = class_slots(proto_class, K)
    weight = torch.zeros(K, G, index.shape[1])
    for k, c in enumerate(present):
        w = take(f"group_projection.{k}.weight", f"group_head.weight[{c}]")
        n = int(valid[c].sum())
        if w.shape[0] != G:
            raise _refuse(where, f"group count mismatch: the file has {w.shape[0]} groups per class; "
                                 f"presets.{cfg.dataset}.{cfg.method}.groups is {G}.")
        if w.shape[1] != n:
            raise _refuse(where, f"group_projection.{k} has {w.shape[1]} inputs, class {c} has {n} prototypes.")
        weight[c, :, :n] = w.float()
    if tuple(head.shape) != (K, G * len(present)):
        raise _refuse(where, f"last_layer_group.weight is {tuple(head.shape)}, ({K}, {G * len(present)}) expected.")
    table = rel.group_class_identity
    if table is not None and table.argmax(1).tolist() != [c for c in present for _ in range(G)]:
        raise _refuse(where, "group_class_identity does not follow the classes with prototypes.")
    ours = torch.zeros(K, K * G)
    for k, c in enumerate(present):
        ours[:, c * G:(c + 1) * G] = head[:, k * G:(k + 1) * G].float()
    return {"group_head.weight": weight, "group_head.head": ours, "group_head.index": index,
            "group_head.valid": valid, "group_head.group_class": torch.arange(K).repeat_interleave(G)}


def _trunk(rel: Released, t, take, model, where) -> dict[str, torch.Tensor]:
    """Trunk and ASPP by name; every tensor of ours must come from the file with its shape."""
    rename = _deeplab_key if rel.trunk == "deeplab" else _unet_key
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "aspp."))}
    out = {}
    for name in sorted(k for k in t if k.startswith(rel.base)):
        ours = rename(name[len(rel.base):])
        if ours is None or ours not in wanted:
            continue  # reported as a tensor without a place
        value = take(name, ours)
        if tuple(value.shape) != tuple(wanted[ours].shape):
            raise _refuse(where, f"shape mismatch: {name} is {tuple(value.shape)}, our {ours} is "
                                 f"{tuple(wanted[ours].shape)} (check {'model.width' if rel.trunk == 'unet' else 'the preset'}).")
        out[ours] = value.to(wanted[ours].dtype)  # load_state_dict copies it into the model
    for ours, value in wanted.items():
        if ours not in out and ours.endswith("num_batches_tracked"):
            out[ours] = torch.zeros_like(value)  # older SyncBatchNorm keeps no counter; unused in evaluation
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise _refuse(where, f"the file has no tensor for our {', '.join(missing[:4])}{'…' if len(missing) > 4 else ''} "
                             f"({len(missing)} in all): its trunk does not match our {type(model.backbone).__name__}.")
    _check_geometry(rel, rename, model, where)
    return out


def _check_geometry(rel: Released, rename, model, where) -> None:
    """Stride, padding, dilation of every released convolution (and BatchNorm eps) equal ours: the same
    tensors in another geometry would give other numbers (the ASPP rates among them)."""
    ours = dict(model.named_modules())
    base = rel.base.rstrip(".")
    for path, module in rel.modules.items():
        name = type(module).pickled_as[1]
        if not path.startswith(base + ".") or not ("Conv" in name or "BatchNorm" in name):
            continue
        mapped = rename(path[len(base) + 1:] + ".weight")
        mine = ours.get(mapped[: -len(".weight")]) if mapped else None
        if mine is None:
            continue
        keys = ("stride", "padding", "dilation", "groups") if "Conv" in name else ("eps",)
        for key in keys:
            theirs, value = module.attrs.get(key), getattr(mine, key, None)
            if theirs is not None and value is not None and theirs != value:
                raise _refuse(where, f"{path}.{key} is {theirs}, ours ({mapped[:-7]}) is {value}"
                                     f"{' (model.aspp_rates)' if 'aspp' in path else ''}.")
