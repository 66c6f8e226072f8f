"""Self-describing checkpoints that are data, not pickled code (docs/method.md §10.1, items 3 and 4).

A checkpoint is a dict of tensors and plain values: the model's state dict, the resolved configuration,
the phase and the step. It loads with `torch.load(..., weights_only=True)`, so loading never executes code
from the file, and any notebook can rebuild the model from the file alone. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArtifactError
from ..io import atomic_path

FORMAT = "scaleprotoseg-checkpoint-v1"


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, phase: str, step: int, **extra: Any) -> Path:
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "phase": phase,
        "step": int(step),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, stage_hint: str = "the training stage") -> dict:
    """Load a checkpoint safely (no code execution); a missing file names the stage that makes it."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"Checkpoint {path} not found; run {stage_hint} first (`dvc repro`).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ArtifactError(f"{path} is not a readable checkpoint ({exc}); delete it and re-run {stage_hint}.") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a {FORMAT} checkpoint; re-run {stage_hint}.")
    return payload
