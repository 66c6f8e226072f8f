"""Where the pipeline keeps each artifact: one folder per dataset, method and seed, relative to the repository
root (so running another dataset never replaces a dataset's models or reports; the executed notebooks are
under `reports/<dataset>/`). `dvc.yaml` writes the same paths (a test checks every stage against `table.STAGES`)."""

from __future__ import annotations

from pathlib import Path

from ..paths import repo_root

LAYOUT = {
    "prepared": "artifacts/prepared/{dataset}",
    "prepare_reports": "reports/prepare/{dataset}",
    "report": "reports/report/{dataset}",
    "train": "artifacts/train/{dataset}/{method}/seed-{seed}",
    "start_project": "artifacts/project/{dataset}/{start}/seed-{seed}",  # the projected model a method starts from
    "deeplab_train": "artifacts/train/{dataset}/deeplab/seed-{seed}",
    "project": "artifacts/project/{dataset}/{method}/seed-{seed}",
    "export": "artifacts/export/{dataset}/{method}/seed-{seed}",
    "package": "artifacts/package/{dataset}/{method}/seed-{seed}",
    "train_reports": "reports/train/{dataset}/{method}/seed-{seed}",
    "project_reports": "reports/project/{dataset}/{method}/seed-{seed}",
    "evaluate_reports": "reports/evaluate/{dataset}/{method}/seed-{seed}",
    "interpret_reports": "reports/interpret/{dataset}/{method}/seed-{seed}",
}


def layout(key: str, dataset: str = "embedded", method: str = "deeplab", seed: int = 0, start: str | None = None) -> str:
    """Where the pipeline keeps `key` for one dataset, method and seed (relative to the repository); `start`
    is the method that `method` starts from (scaleprotoseg_groups: scaleprotoseg)."""
    return LAYOUT[key].format(dataset=dataset, method=method, seed=seed, start=start)


def resolve(path: str | Path) -> Path:
    """Paths in params.yaml and dvc.yaml are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else repo_root() / path
