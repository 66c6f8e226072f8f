"""Stage 55, package: a method's final model as a shareable package (`scaleprotoseg.package`): model.safetensors,
config.json and a model card carrying the evaluate and interpret stages' numbers. Reads saved artifacts only:
re-packaging retrains nothing."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import final_checkpoint
from ..config import RunConfig
from ..package import write_package


def package(cfg: RunConfig, train_dir: Path, project_dir: Path, evaluate_dir: Path, interpret_dir: Path | None,
            out_dir: Path, progress: bool = True) -> dict:
    """Package the model the method is evaluated with (the projected one when there is one) into `out_dir`;
    the card takes the metrics of `evaluate_dir`/`interpret_dir`'s summary.json and the prototype gallery."""
    return write_package(final_checkpoint(train_dir, project_dir), out_dir, evaluate_dir=evaluate_dir,
                         interpret_dir=interpret_dir, stage_hint=f"train@{cfg.method}", expect=cfg)
