"""Losses as pure functions on tensors (official-implementation §3).

Every loss is computed at feature resolution: labels are nearest-downsampled to the logits' (h, w), never
the logits upsampled. With multi-scale inputs (MSC) the loss is averaged over the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.prepared import VOID
from .data.transforms import downsample_labels


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, void: int = VOID) -> torch.Tensor:
    """Mean CE over non-void pixels. logits (B, K, h, w); labels (B, H, W) at input resolution."""
    target = downsample_labels(labels, logits.shape[-2:])
    if not (target != void).any():
        return logits.sum() * 0.0  # a crop of void only: no signal, but keep the graph
    return F.cross_entropy(logits, target, ignore_index=void)


def msc_mean(loss_fn, outputs, labels: torch.Tensor) -> torch.Tensor:
    """Average `loss_fn(output, labels)` over the MSC outputs (a single tensor counts as one)."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, labels)
    return sum(loss_fn(o, labels) for o in outputs) / len(outputs)
