"""Stage 70, export: test-set predictions in the evaluation servers' formats (Pascal VOC, Cityscapes)."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import final_checkpoint
from ..config import RunConfig
from ..device import resolve_device
from ..models.build import load_model


def export(cfg: RunConfig, data_root: Path, train_dir: Path, project_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Test-set predictions in the evaluation server's format (pascal, cityscapes); a note otherwise."""
    from ..export import export_test_predictions

    device = resolve_device(cfg.device)
    model, _, _ = load_model(final_checkpoint(train_dir, project_dir), device, f"train@{cfg.method}", cfg)
    return export_test_predictions(model, data_root, cfg.data, cfg.dataset, out_dir, device, progress)
