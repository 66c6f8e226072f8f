"""DeepLab-v2 (Chen et al., TPAMI 2017), the black-box baseline: the four ASPP branches map the trunk's
features straight to K class logits and are **summed** (docs/method.md §2.2); MSC as in `base`."""

from __future__ import annotations

import torch
from torch import nn

from .aspp import ASPP
from .base import SegmentationModel


class DeepLabV2(SegmentationModel):
    """Trunk → ASPP (branches summed into K logits) at output stride 8."""

    def __init__(self, backbone: nn.Module, num_classes: int, rates, msc_scales=(), bn_eval: bool = False):
        super().__init__(backbone, num_classes, msc_scales, bn_eval)
        self.aspp = ASPP(backbone.out_channels, num_classes, rates, mode="sum")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(x))  # (B, K, h, w)

    def forward(self, x: torch.Tensor):
        """Logits at feature resolution: a list of MSC outputs in training, one tensor in evaluation."""
        return self.msc(x, self.training)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) logits at feature resolution, for evaluation (MSC-fused when enabled)."""
        return self.msc(x, training=False)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split as the optimiser needs them: trunk ("1x") and ASPP head ("10x")."""
        trunk = [p for n, p in self.backbone.named_parameters() if p.requires_grad]
        return {"trunk": trunk, "head": list(self.aspp.parameters())}
