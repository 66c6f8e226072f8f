"""What a stage reports for comparison: `metrics.json` holds a few headline numbers per method, so that
`dvc metrics show` prints one row per method and stage in a table that fits a screen; everything else a
stage measures goes to `summary.json` beside it (per-class IoU: per_class_iou.csv)."""

from __future__ import annotations

from pathlib import Path

from .io import write_json

HEADLINE = {"evaluate": ("miou", "pixel_accuracy", "prototypes_used"), "interpret": ("consistency", "stability")}


def write_results(report_dir: Path, summary: dict, stage: str) -> None:
    """`summary.json` (everything) and `metrics.json` (the stage's headline numbers that exist)."""
    write_json(Path(report_dir) / "summary.json", summary)
    write_json(Path(report_dir) / "metrics.json", {k: summary[k] for k in HEADLINE[stage] if summary.get(k) is not None})
