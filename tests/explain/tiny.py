"""The untrained tiny models the explain tests build: a method's network at width 8, random weights, eval mode."""

from __future__ import annotations

import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.models.build import build_for

TINY = {"presets.embedded.model.width": 8, "presets.embedded.protoseg.features": 8,
        "presets.embedded.scaleprotoseg.features": 8, "experiment.device": "cpu"}


def tiny_model(params, method: str, K: int, seed: int = 0):
    cfg = load_config(params, method=method, overrides=TINY)
    torch.manual_seed(seed)
    return build_for(cfg, K, offline=True).eval(), cfg
