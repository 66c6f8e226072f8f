"""What every segmenter here shares: a trunk at output stride 8, multi-input-scale (MSC) inference and
training, BatchNorm that can be held in evaluation mode, and `predict_logits` for evaluation.

MSC (docs/method.md §2.3): the network also runs on the input resized by each extra scale p, the outputs
are resized bilinearly to the full-scale output and an element-wise max fuses them. The input is resized
as the released code does it, by the *scale factor* (bilinear, `align_corners=False`, size ⌊n·p⌋): source
coordinate = (i + 0.5)/p − 0.5, a sampling step of exactly 1/p. (An explicit output size would give the
same size but a step of n/⌊n·p⌋, e.g. 2.00625 for 321 → 160, so the 0.5/0.75 branches would see other
pixels.) Training returns every output plus the max (the loss is averaged over them); evaluation returns
the max only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import freeze_batchnorm


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


class SegmentationModel(nn.Module):
    """Base of DeepLab-v2 and the prototype segmenters.

    `backbone`: the trunk; `msc_scales`: extra input scales; `bn_eval`: while set, `train()` keeps the
    trunk's BatchNorm in evaluation mode (the paper's frozen BatchNorm, and phases that do not train the
    trunk). Subclasses define `forward_features(x)` (one input scale, pre-activation features) and
    `predict_logits(x)` ((B, K, h, w) logits at feature resolution for evaluation).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, msc_scales=(), bn_eval: bool = False):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.msc_scales = tuple(msc_scales)
        self.bn_eval = bn_eval

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.bn_eval:
            freeze_batchnorm(self.backbone)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def msc(self, x: torch.Tensor, training: bool):
        """`forward_features` under MSC: a list (full, each scale, max) in training, the max otherwise."""
        return multi_scale(self.forward_features, x, self.msc_scales, training)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
