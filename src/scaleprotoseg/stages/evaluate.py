"""Stage 40, evaluate: whole-image mIoU on the validation split (docs/method.md §7), per-class IoU, the
confusion matrix and example predictions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..artifacts import final_checkpoint
from ..atomic import write_csv
from ..config import RunConfig
from ..data.loader import eval_loader
from ..data.prepared import PreparedDataset, read_meta
from ..device import resolve_device
from ..evaluation import evaluate
from ..metrics.segmentation import summarise
from ..models.build import load_model
from ..stage_metrics import write_results


def evaluate_stage(cfg: RunConfig, data_root: Path, train_dir: Path, project_dir: Path, report_dir: Path, progress: bool = True) -> dict:
    """Whole-image mIoU on the validation split; metrics JSON, per-class table and figures."""
    report_dir = Path(report_dir)
    device = resolve_device(cfg.device)
    meta = read_meta(data_root)
    model, _, payload = load_model(final_checkpoint(train_dir, project_dir), device, f"train@{cfg.method}", cfg, meta.classes)
    loader = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, cfg.eval.max_images, cfg.runtime.num_workers)
    n = len(loader.dataset)
    rng = np.random.default_rng([cfg.seed, 40])
    keep = np.sort(rng.choice(n, size=min(cfg.eval.n_examples, n), replace=False))
    t0 = time.perf_counter()
    res = evaluate(model, loader, meta.num_classes, device, keep=keep, progress=progress)
    metrics = summarise(res.confusion, meta.classes)
    metrics["images"] = res.n_images
    if hasattr(model, "prototypes"):
        from ..models.prototypes import prototype_counts

        counts = prototype_counts(model)
        metrics.update({"prototypes_used": counts["prototypes"], **counts})  # all used unless groups say otherwise
    write_results(report_dir, metrics, "evaluate", params=cfg.to_dict(), plots={"per_class_iou": (
        [{"class": c, "IoU %": round(float(v), 4)} for c, v in metrics["iou"].items() if v is not None and v == v], "IoU %", "class",
        "bar_horizontal")})
    table = per_class_table(metrics)
    write_csv(table, report_dir / "per_class_iou.csv")
    write_csv(pd.DataFrame(res.confusion, index=meta.classes, columns=meta.classes), report_dir / "confusion.csv")
    plots.save_figure(plots.confusion_figure(res.confusion, meta.classes, f"{cfg.method}: confusion matrix (row-normalised, %)"), report_dir / "confusion.png")
    if len(keep):
        ds = PreparedDataset(data_root, "val")
        fig = plots.predictions_figure([ds.image(i) for i in keep], [ds.label(i) for i in keep], [res.examples[i] for i in keep],
                                       meta.classes, titles=[ds.ids[i] for i in keep])
        plots.save_figure(fig, report_dir / "predictions.png")
    return {"metrics": metrics, "table": table, "seconds": time.perf_counter() - t0}


def per_class_table(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame({"IoU %": metrics["iou"]}).rename_axis("class")
