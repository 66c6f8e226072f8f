"""Segmenters built from a backbone and an ASPP head, with the multi-input-scale (MSC) wrapper.

DeepLab-v2 (Chen et al., TPAMI 2017): the four ASPP branches map backbone features straight to K class
logits and are **summed**. MSC (docs/method.md §2.3): the network also runs on the input resized
by each extra scale p, the outputs are resized bilinearly to the full-scale output and an element-wise
max fuses them. The input is resized as the released code does it, by the *scale factor* (bilinear,
`align_corners=False`, size ⌊n·p⌋): source coordinate = (i + 0.5)/p − 0.5, a sampling step of exactly 1/p.
(An explicit output size would give the same size but a step of n/⌊n·p⌋, e.g. 2.00625 for 321 → 160, so
the 0.5/0.75 branches would see different pixels.) Training returns every output plus the max (the loss is averaged over them); evaluation
returns the max only.

Staged forward API: `forward_features(x)` (one input scale, backbone + ASPP), `forward(x)` (MSC around it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .aspp import ASPP
from .backbone import build_backbone, freeze_batchnorm


def resize_by_factor(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) by the factor p on the released MSC grid: output ⌊H·p⌋ × ⌊W·p⌋,
    source coordinate (i + 0.5)/p − 0.5 (step 1/p, not H/⌊H·p⌋)."""
    return F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def multi_scale(fn, x: torch.Tensor, scales, training: bool):
    """Run `fn` on `x` and on `x` resized by each of `scales`; fuse by element-wise max (method.md §2.3)."""
    full = fn(x)
    if not scales:
        return [full] if training else full
    outs = [fn(resize_by_factor(x, s)) for s in scales]
    fused = full
    for o in outs:
        fused = torch.maximum(fused, F.interpolate(o, size=full.shape[-2:], mode="bilinear", align_corners=False))
    return [full, *outs, fused] if training else fused


class FrozenBatchNormMixin:
    """`train()` keeps the trunk's BatchNorm in evaluation mode while `self.freeze_bn` is set (the paper's
    frozen BN, and phases that do not train the trunk)."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            freeze_batchnorm(self.backbone)
        return self


class DeepLabV2(FrozenBatchNormMixin, nn.Module):
    """The black-box baseline: trunk → ASPP (branches summed into K logits) at output stride 8."""

    def __init__(self, backbone: nn.Module, num_classes: int, rates, msc_scales=(), freeze_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, num_classes, rates, mode="sum")
        self.msc_scales = tuple(msc_scales)
        self.freeze_bn = freeze_bn
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(x))  # (B, K, h, w)

    def forward(self, x: torch.Tensor):
        """Logits at feature resolution: a list of MSC outputs in training, one tensor in evaluation."""
        return multi_scale(self.forward_features, x, self.msc_scales, self.training)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) logits at feature resolution, for evaluation (MSC-fused when enabled)."""
        return multi_scale(self.forward_features, x, self.msc_scales, training=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split as the optimiser needs them: trunk ("1x") and ASPP head ("10x")."""
        trunk = [p for n, p in self.backbone.named_parameters() if p.requires_grad]
        return {"trunk": trunk, "head": list(self.aspp.parameters())}


def build_model(method: str, model_cfg: ModelConfig, num_classes: int, prototypes: int = 3, features: int = 64) -> nn.Module:
    """The network of `method` from the `model` section of its preset (prototype methods: how many
    prototypes per class (ProtoSeg) or per class and scale (ScaleProtoSeg), and their dimension)."""
    backbone = build_backbone(
        model_cfg.backbone,
        pretrained=model_cfg.pretrained,
        pretrained_path=model_cfg.pretrained_path,
        width=model_cfg.width,
    )
    if model_cfg.freeze_bn:
        freeze_batchnorm(backbone)
    if method == "deeplab":
        return DeepLabV2(backbone, num_classes, model_cfg.aspp_rates, model_cfg.msc_scales, model_cfg.freeze_bn)
    if method in ("protoseg", "scaleprotoseg"):
        from .prototypes import PrototypeSegmenter

        return PrototypeSegmenter(backbone, num_classes, model_cfg.aspp_rates, per_class=prototypes,
                                  features=features, multiscale=method == "scaleprotoseg",
                                  msc_scales=model_cfg.msc_scales, freeze_bn=model_cfg.freeze_bn)
    raise ValueError(f"no model for method {method!r}")
