"""The untrained tiny models the explain tests build: a method's network at width 8, random weights, eval mode."""

from __future__ import annotations

import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.interpretability import similarity_maps
from scaleprotoseg.models.build import build_for

TINY = {"presets.embedded.model.width": 8, "presets.embedded.protoseg.features": 8,
        "presets.embedded.scaleprotoseg.features": 8, "experiment.device": "cpu"}


def tiny_model(params, method: str, K: int, seed: int = 0):
    cfg = load_config(params, method=method, overrides=TINY)
    torch.manual_seed(seed)
    return build_for(cfg, K, offline=True).eval(), cfg


@torch.no_grad()
def vary_head(model, x: torch.Tensor, seed: int = 1) -> None:
    """Set the class head (rows orthogonal to the mean activation over `x`, unit spread) so that the
    prediction on `x` varies over the image instead of one class everywhere."""
    sim = similarity_maps(model, x)
    gh = model.group_head
    a = gh.group_activations(sim[None])[0] if gh is not None else sim
    W = gh.head if gh is not None else model.last_layer
    mean = a.mean((1, 2))
    R = torch.randn(W.shape, generator=torch.Generator().manual_seed(seed))
    R = R - (R @ mean)[:, None] * mean[None] / (mean @ mean)
    W.copy_(R / (R @ (a - mean[:, None, None]).flatten(1)).std(1, keepdim=True))
