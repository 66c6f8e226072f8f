"""What the stage modules share with `context` (which imports them, in smoke mode): the pipeline's folder
layout, paths relative to the repository, and seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..paths import repo_root


LAYOUT = {
    "prepared": "artifacts/prepared/{dataset}",
    "prepare_reports": "reports/prepare",
    "report": "reports/report",
    "train": "artifacts/train/{method}/seed-{seed}",
    "deeplab_train": "artifacts/train/deeplab/seed-{seed}",
    "project": "artifacts/project/{method}/seed-{seed}",
    "export": "artifacts/export/{method}/seed-{seed}",
    "train_reports": "reports/train/{method}/seed-{seed}",
    "project_reports": "reports/project/{method}/seed-{seed}",
    "evaluate_reports": "reports/evaluate/{method}/seed-{seed}",
    "interpret_reports": "reports/interpret/{method}/seed-{seed}",
}


def layout(key: str, dataset: str = "embedded", method: str = "deeplab", seed: int = 0) -> str:
    """Where the pipeline keeps `key` for one dataset, method and seed (relative to the repository)."""
    return LAYOUT[key].format(dataset=dataset, method=method, seed=seed)


def resolve(path: str | Path) -> Path:
    """Paths in params.yaml and dvc.yaml are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else repo_root() / path


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
