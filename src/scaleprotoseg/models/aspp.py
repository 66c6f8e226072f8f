"""Atrous spatial pyramid pooling (DeepLab-v2): parallel dilated 3×3 convs over the trunk features.

`mode="sum"`: branches summed (DeepLab-v2 class logits; ProtoSeg's 64-channel features).
`mode="concat"`: branches concatenated scale-major (ScaleProtoSeg: 4 × 64 channels, branch i = scale i).
Weights N(0, 0.01), biases 0 (docs/method.md §2.2).
"""

from __future__ import annotations

import torch
from torch import nn


class ASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, rates, mode: str = "sum"):
        super().__init__()
        if mode not in ("sum", "concat"):
            raise ValueError(f"ASPP mode must be 'sum' or 'concat', got {mode!r}")
        self.mode = mode
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=True) for r in self.rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    @property
    def out_channels(self) -> int:
        n = self.branches[0].out_channels
        return n * len(self.branches) if self.mode == "concat" else n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        if self.mode == "concat":
            return torch.cat(outs, dim=1)
        return torch.stack(outs, dim=0).sum(dim=0)
