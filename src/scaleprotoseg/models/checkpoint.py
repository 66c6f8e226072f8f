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

from ..atomic import atomic_path
from ..errors import ArtifactError, DivergenceError, on_console

FORMAT = "scaleprotoseg-checkpoint-v1"


def check_finite(state: dict, path: str | Path) -> None:
    """Refuse to write weights with inf/NaN (a diverged run must not replace a good checkpoint)."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DivergenceError(f"not writing {path}: {len(bad)} tensor(s) hold inf/NaN ({', '.join(bad[:5])}); the "
                              "training diverged. The previous file is kept; lower the learning rates and run again.")


def save_checkpoint(path: str | Path, model: nn.Module, config: dict, phase: str, step: int, **extra: Any) -> Path:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    check_finite(state, path)
    payload = {
        "format": FORMAT,
        "state_dict": state,
        "config": config,
        "phase": phase,
        "step": int(step),
        **extra,
    }
    write_torch(payload, path)
    return Path(path)


def write_torch(obj, path: str | Path) -> None:
    """`torch.save` atomically; a failed write (a full disk) names the file and keeps the previous one."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except ArtifactError:  # already named (a full disk) and shown on the console
        raise
    except (OSError, RuntimeError) as exc:  # torch reports a short write as RuntimeError
        raise on_console(ArtifactError(f"could not write {path} ({exc}); is the disk full? The previous {Path(path).name}, "
                            "if any, is unchanged; free space and run again (the run resumes).")) from exc


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
