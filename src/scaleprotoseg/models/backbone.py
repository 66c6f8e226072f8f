"""Backbones at output stride 8.

`resnet101`: the DeepLab-v2 ResNet-101 trunk in the Caffe layout (docs/method.md §2.1): a 7×7/2 stem
with a **ceil-mode** 3×3/2 max-pool, bottleneck stages [3, 4, 23, 3] where the stride of a strided block sits
on its first 1×1 (`reduce`), dilation 2 in the fourth stage and 4 in the fifth, BN eps 1e-5 / momentum 0.001.
Module names follow that layout (`layer1.conv1.{conv,bn}`, `layerN.blockM.{reduce,conv3x3,increase,shortcut}`),
so torchvision's ImageNet ResNet-101 maps onto it by name. Torchvision puts the stride on the 3×3: loading
its weights here is the stride-placement mismatch the paper inherits from ProtoSeg — kept on purpose.

`small`: the same stem and output-stride-8 geometry with BasicBlocks of width w, 2w, 4w, 8w, for the CPU
default. It is never pre-trained.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..paths import repo_root

BN_EPS = 1e-5
BN_MOMENTUM = 0.001  # Caffe-converted DeepLab value (PyTorch convention: weight of the new batch)
# The small backbone trains BN from scratch in a few hundred steps: with 0.001 its running statistics would
# still sit at their initial values at evaluation, so it uses PyTorch's default.
SMALL_BN_MOMENTUM = 0.1


class ConvBN(nn.Module):
    """conv (no bias) → BN, optionally followed by ReLU; named `conv` / `bn` like the Caffe layout."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, relu=True, momentum=BN_MOMENTUM):
        super().__init__()
        pad = dilation * (k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=momentum)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.relu else x


class Stem(nn.Module):
    """7×7/2 conv + BN + ReLU, then max-pool 3×3/2 pad 1 with ceil_mode (hence 512 → 65)."""

    def __init__(self, cout, momentum=BN_MOMENTUM):
        super().__init__()
        self.conv1 = ConvBN(3, cout, 7, stride=2, momentum=momentum)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv1(x))


class Bottleneck(nn.Module):
    """reduce 1×1 (carries the stride) → conv3x3 (dilated) → increase 1×1, plus the shortcut."""

    def __init__(self, cin, cout, stride, dilation, downsample):
        super().__init__()
        mid = cout // 4
        self.reduce = ConvBN(cin, mid, 1, stride=stride)
        self.conv3x3 = ConvBN(mid, mid, 3, dilation=dilation)
        self.increase = ConvBN(mid, cout, 1, relu=False)
        self.shortcut = ConvBN(cin, cout, 1, stride=stride, relu=False) if downsample else None

    def forward(self, x):
        h = self.increase(self.conv3x3(self.reduce(x)))
        return torch.relu(h + (self.shortcut(x) if self.shortcut is not None else x))


class BasicBlock(nn.Module):
    """Two 3×3 convs (the first carries the stride), for the small backbone."""

    def __init__(self, cin, cout, stride, dilation, downsample):
        super().__init__()
        m = SMALL_BN_MOMENTUM
        self.conv_a = ConvBN(cin, cout, 3, stride=stride, dilation=dilation, momentum=m)
        self.conv_b = ConvBN(cout, cout, 3, dilation=dilation, relu=False, momentum=m)
        self.shortcut = ConvBN(cin, cout, 1, stride=stride, relu=False, momentum=m) if downsample else None

    def forward(self, x):
        h = self.conv_b(self.conv_a(x))
        return torch.relu(h + (self.shortcut(x) if self.shortcut is not None else x))


class Stage(nn.Sequential):
    def __init__(self, block, n_blocks, cin, cout, stride, dilation):
        super().__init__()
        for i in range(n_blocks):
            first = i == 0
            self.add_module(
                f"block{i + 1}",
                block(cin if first else cout, cout, stride if first else 1, dilation, downsample=first),
            )


class _Trunk(nn.Module):
    out_channels: int

    def forward(self, x):
        for name in ("layer1", "layer2", "layer3", "layer4", "layer5"):
            x = getattr(self, name)(x)
        return x


class DeepLabResNet101(_Trunk):
    """DeepLab-v2 ResNet-101, Caffe layout, output stride 8, 2048 output channels."""

    def __init__(self, n_blocks=(3, 4, 23, 3)):
        super().__init__()
        ch = [64, 128, 256, 512, 1024, 2048]
        self.layer1 = Stem(ch[0])
        self.layer2 = Stage(Bottleneck, n_blocks[0], ch[0], ch[2], stride=1, dilation=1)
        self.layer3 = Stage(Bottleneck, n_blocks[1], ch[2], ch[3], stride=2, dilation=1)
        self.layer4 = Stage(Bottleneck, n_blocks[2], ch[3], ch[4], stride=1, dilation=2)
        self.layer5 = Stage(Bottleneck, n_blocks[3], ch[4], ch[5], stride=1, dilation=4)
        self.out_channels = ch[5]


class SmallDilatedResNet(_Trunk):
    """A light trunk with the same output-stride-8 geometry (stem, one stride-2 stage, dilations 2 and 4)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.layer1 = Stem(w, momentum=SMALL_BN_MOMENTUM)
        self.layer2 = Stage(BasicBlock, 1, w, w, stride=1, dilation=1)
        self.layer3 = Stage(BasicBlock, 1, w, 2 * w, stride=2, dilation=1)
        self.layer4 = Stage(BasicBlock, 1, 2 * w, 4 * w, stride=1, dilation=2)
        self.layer5 = Stage(BasicBlock, 1, 4 * w, 8 * w, stride=1, dilation=4)
        self.out_channels = 8 * w


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of `module` in eval mode and stop gradients to its affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def feature_size(n: int) -> int:
    """Spatial size of the output-stride-8 map for an input side n (conv/2, ceil-mode pool/2, stride-2 1×1)."""
    n = (n - 1) // 2 + 1
    n = -(-(n - 1) // 2) + 1
    return (n - 1) // 2 + 1


_TV_BLOCK = {"conv1": "reduce", "bn1": "reduce", "conv2": "conv3x3", "bn2": "conv3x3", "conv3": "increase", "bn3": "increase"}


def torchvision_to_deeplab_key(key: str) -> str | None:
    """Rename a torchvision ResNet key to the Caffe layout; None for keys with no counterpart (`fc`)."""
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):
        kind = "conv" if parts[0] == "conv1" else "bn"
        return ".".join(["layer1", "conv1", kind, *parts[1:]])
    if parts[0].startswith("layer") and len(parts) >= 4:
        stage = int(parts[0][5:]) + 1
        block = int(parts[1]) + 1
        head = f"layer{stage}.block{block}"
        if parts[2] == "downsample":
            kind = "conv" if parts[3] == "0" else "bn"
            return ".".join([head, "shortcut", kind, *parts[4:]])
        if parts[2] in _TV_BLOCK:
            kind = "conv" if parts[2].startswith("conv") else "bn"
            return ".".join([head, _TV_BLOCK[parts[2]], kind, *parts[3:]])
    return None


def map_torchvision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = torchvision_to_deeplab_key(k)
        if new is not None:
            out[new] = v
    return out


_HOW_TO_FIX = (
    "Set model.pretrained: false in params.yaml (or `dvc exp run -S presets.<dataset>.<method>.model.pretrained=false`), "
    "or download torchvision's resnet101 ImageNet weights on a machine with internet and point "
    "model.pretrained_path to the .pth file."
)


def imagenet_state_dict(pretrained_path: str | None = None) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-101 ImageNet weights (IMAGENET1K_V1, as torchvision 0.11 shipped), from a file or
    torchvision's cache / download. Any failure ends in a ConfigError that says which parameter to change."""
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_absolute():  # relative to the repository, as every path of params.yaml (a stage's kernel
            path = repo_root() / path  # runs in reports/)
        if not path.is_file():
            raise ConfigError(f"model.pretrained_path: {path} does not exist. {_HOW_TO_FIX}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"model.pretrained_path: cannot read {path} ({exc}). {_HOW_TO_FIX}") from exc
    try:
        from torchvision.models import ResNet101_Weights

        return ResNet101_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as exc:
        raise ConfigError(f"model.pretrained: could not obtain ImageNet ResNet-101 weights ({exc}). {_HOW_TO_FIX}") from exc


def load_torchvision_resnet101(model: DeepLabResNet101, state: dict[str, torch.Tensor]) -> None:
    """Load torchvision ResNet-101 weights into the Caffe-layout trunk by name; every trunk tensor must match."""
    mapped = map_torchvision_state_dict(state)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ConfigError(
            f"model.pretrained_path: the weights do not match ResNet-101 (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}). {_HOW_TO_FIX}"
        )


class UNet(nn.Module):
    """The EM preset's trunk (docs/method.md §2.1): a standard U-Net (widths w…16w, max-pool down,
    transposed-conv up, BatchNorm) whose 1×1 head gives `out_channels` features at full resolution; no
    pre-training, BatchNorm trained. Input sides must be divisible by 16."""

    def __init__(self, width: int = 64, out_channels: int = 64):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        w = [width * 2**i for i in range(5)]
        self.down = nn.ModuleList([block(3, w[0])] + [block(w[i], w[i + 1]) for i in range(4)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in reversed(range(4)))
        self.merge = nn.ModuleList(block(2 * w[i], w[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(w[0], out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            skip = skips.pop()
            x = up(x)
            x = merge(torch.cat([skip, F.interpolate(x, size=skip.shape[-2:]) if x.shape[-2:] != skip.shape[-2:] else x], 1))
        return self.head(x)


def build_backbone(name: str, pretrained: bool = False, pretrained_path: str | None = None, width: int = 32) -> nn.Module:
    if name == "resnet101":
        trunk = DeepLabResNet101()
        if pretrained or pretrained_path:
            load_torchvision_resnet101(trunk, imagenet_state_dict(pretrained_path))
        return trunk
    if name == "small":
        if pretrained or pretrained_path:
            raise ConfigError("model.pretrained: the `small` backbone has no ImageNet weights; set model.pretrained: false.")
        return SmallDilatedResNet(width)
    if name == "unet":
        if pretrained or pretrained_path:
            raise ConfigError("model.pretrained: the `unet` backbone (EM) is trained from scratch; set model.pretrained: false.")
        return UNet(width)
    raise ConfigError(f"model.backbone is {name!r}; choose 'resnet101', 'small' or 'unet'.")
