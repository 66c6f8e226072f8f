"""Stage 60, report: every method's metrics as mean ± std over `experiment.seeds`, side by side with the
paper's numbers (docs/method.md §9), the per-seed values, per-class IoU, training curves and the prototype
gallery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..artifacts import read_curves, read_patches
from ..atomic import atomic_path, read_json, write_csv
from ..errors import ArtifactError
from .layout import layout

# The paper's validation mIoU: mean ± std over 3 runs (DeepLab-v2: the published single figure).
PUBLISHED_MIOU = {
    "cityscapes": {"deeplab": (71.40, None), "protoseg": (67.54, 0.22), "scaleprotoseg_groups": (68.97, 0.25)},
    "pascal": {"deeplab": (77.69, None), "protoseg": (71.98, 0.11), "scaleprotoseg_groups": (71.80, 0.38)},
    "ade20k": {"deeplab": (34.00, None), "protoseg": (29.67, 0.23), "scaleprotoseg_groups": (34.18, 0.18)},
}
PAPER_SEEDS = 3
# Metrics averaged over seeds: (column, where it is read from, key); `None` where a method has none.
METRICS = (
    ("mIoU %", "evaluate", "miou"),
    ("pixel acc. %", "evaluate", "pixel_accuracy"),
    ("prototypes used", "evaluate", "prototypes_used"),
    ("zero group weights %", "evaluate", "group_weights_zero_%"),
    ("consistency %", "interpret", "consistency"),
    ("prototypes in consistency", "interpret", "consistency_evaluated"),  # its denominator (CONSISTENCY_NOTE)
    ("stability %", "interpret", "stability"),
    ("prototype overlap %", "interpret", "prototype_overlap"),
    ("group overlap %", "interpret", "group_overlap"),
    # Faithfulness (docs/method.md §13): the model's own map (prototype methods), then Grad-CAM on the model itself
    ("deletion AUC own", "interpret", "faith_deletion_auc"),
    ("insertion AUC own", "interpret", "faith_insertion_auc"),
    ("relevance mass own", "interpret", "faith_relevance_mass"),
    ("deletion AUC Grad-CAM", "interpret", "faith_gradcam_deletion_auc"),
    ("insertion AUC Grad-CAM", "interpret", "faith_gradcam_insertion_auc"),
    ("relevance mass Grad-CAM", "interpret", "faith_gradcam_relevance_mass"),
    ("deletion AUC random", "interpret", "faith_random_deletion_auc"),  # the floor each map is measured against
    ("insertion AUC random", "interpret", "faith_random_insertion_auc"),
    ("train s", "train", "seconds"),
)


# Why a consistency can read 5.00 or 0.00: a share of few prototypes (written under the table when a method has one).
CONSISTENCY_NOTE = ("Consistency % is the share of the prototypes it evaluates (column `prototypes in consistency`: "
                    "those whose class has a visible annotated part) that find the same part in at least τ = 80 % of "
                    "the images (docs/method.md §8). With N of them it moves in steps of 100 / N: 5.00 is one "
                    "prototype of 20, and 0.00 means none reached τ (usual for a model trained briefly), not a "
                    "failed measurement.")


def _read(path: Path) -> dict:
    return read_json(path) if Path(path).is_file() else {}


def collect_results(methods: list[str], seeds: list[int], root: Path, dataset: str = "embedded") -> dict:
    """Every method's metrics for every seed (read from the pipeline's layout under `root`), aggregated."""
    root = Path(root)
    rows, iou, notes = [], {}, []
    for m in methods:
        per_seed_iou = []
        for seed in seeds:
            path = root / layout("evaluate_reports", dataset, m, seed) / "summary.json"
            if not path.is_file():
                raise ArtifactError(f"{path} not found; run the evaluation stage (`dvc repro evaluate@{m}-{seed}`).")
            src = {"evaluate": read_json(path),
                   "interpret": _read(root / layout("interpret_reports", dataset, m, seed) / "summary.json"),
                   "train": _read(root / layout("train", dataset, m, seed) / "train_summary.json")}
            prototype_method = bool(src["evaluate"].get("prototypes"))
            row = {"method": m, "seed": seed}
            for col, where, key in METRICS:
                value = src[where].get(key)
                if col == "prototypes used" and prototype_method and value is None:
                    value = src["evaluate"]["prototypes"]
                row[col] = None if (value is None or (not prototype_method and col == "prototypes used")) else float(value)
            rows.append(row)
            per_seed_iou.append(pd.Series(src["evaluate"]["iou"], dtype=float))
            note = src["interpret"].get("note")
            if note and note not in notes:  # why consistency/stability are empty
                notes.append(note)
        iou[m] = pd.concat(per_seed_iou, axis=1).mean(axis=1)
    per_seed = pd.DataFrame(rows)
    first = seeds[0]
    curves = {m: read_curves(root / layout("train_reports", dataset, m, first) / "dvclive") for m in methods}
    gallery = None
    for m in ("scaleprotoseg_groups", "scaleprotoseg", "protoseg"):
        folder = root / layout("project", dataset, m, first)
        if m in methods and (folder / "patches.npz").is_file():
            gallery = (m, folder)
            break
    return {"per_seed": per_seed, "table": aggregate(per_seed, dataset), "iou": pd.DataFrame(iou), "curves": curves,
            "gallery": gallery, "notes": notes, "seeds": list(seeds), "dataset": dataset}


def aggregate(per_seed: pd.DataFrame, dataset: str = "embedded") -> pd.DataFrame:
    """Per method: mean and sample standard deviation (ddof = 1; none with one seed) of every metric over
    its seeds, plus the paper's mean ± std where published."""
    published = PUBLISHED_MIOU.get(dataset, {})
    out = []
    for m, group in per_seed.groupby("method", sort=False):
        row = {"method": m, "seeds": len(group)}
        for col, _, _ in METRICS:
            values = group[col].dropna().astype(float)
            row[f"{col} mean"] = float(values.mean()) if len(values) else None
            row[f"{col} std"] = float(values.std(ddof=1)) if len(values) > 1 else None
            if col == "mIoU %" and published:
                mean, std = published.get(m, (None, None))
                row["paper mIoU % mean"], row["paper mIoU % std"] = mean, std
        out.append(row)
    return pd.DataFrame(out).set_index("method")


def _mean_std(mean, std, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The aggregated table as people read it: one `mean ± std` cell per metric, `—` where a method has none."""
    cols = [c[: -len(" mean")] for c in table.columns if c.endswith(" mean")]
    shown = pd.DataFrame(index=table.index)
    shown["seeds"] = table["seeds"]
    for c in cols:
        digits = 0 if c in ("prototypes used", "prototypes in consistency", "train s") else 3 if ("AUC" in c or "mass" in c) else 2
        shown[c] = [_mean_std(a, b, digits) for a, b in zip(table[f"{c} mean"], table[f"{c} std"])]
    return shown


def seed_table(per_seed: pd.DataFrame, column: str = "mIoU %") -> pd.DataFrame:
    """One metric per method (rows) and seed (columns)."""
    table = per_seed.pivot(index="method", columns="seed", values=column)
    return table.reindex(index=per_seed["method"].unique(), columns=per_seed["seed"].unique())  # as listed


def write_report(results: dict, dataset: str, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    table, per_seed, seeds = results["table"], results["per_seed"], results["seeds"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, out_dir / "results.csv")
    write_csv(per_seed.set_index(["method", "seed"]), out_dir / "results_per_seed.csv")
    n = len(seeds)
    spread = (f"mean ± sample standard deviation over {n} seeds ({', '.join(map(str, seeds))})" if n > 1 else
              f"one seed ({seeds[0]}): no standard deviation; list more in `experiment.seeds` (the paper uses {PAPER_SEEDS})")
    note = (f"\n\nThe paper's numbers (docs/method.md §9) are validation mIoU, mean ± std of {PAPER_SEEDS} runs; its "
            "ScaleProtoSeg figure is the grouped model after thresholding at 0.05; its DeepLab-v2 figure is the "
            "published one.\n" if "paper mIoU % mean" in table else
            "\n\nThis dataset is not one of the paper's: no published numbers to compare with.\n")
    shown = display_table(table)  # the paper's mean ± std (when published) right after ours
    by_seed = seed_table(per_seed).rename(columns=lambda s: f"seed {s}")
    with atomic_path(out_dir / "results.md") as tmp:
        notes = list(results.get("notes") or [])  # why cells are empty (no part annotations, a black-box method)
        if table["consistency % mean"].notna().any():
            notes.append(CONSISTENCY_NOTE)
        footnotes = "\n\n" + "\n".join(f"- {x}" for x in notes) if notes else ""
        tmp.write_text(f"# Results on `{dataset}`\n\nEach cell: {spread}. `—`: the method has no such quantity "
                       f"(DeepLab has no prototypes). Deletion / insertion AUC (lower / higher: more faithful) and "
                       f"relevance mass: docs/method.md §13.\n\n{shown.to_markdown(disable_numparse=True)}\n\n## mIoU % per seed\n\n"
                       f"{by_seed.to_markdown(floatfmt='.2f')}{footnotes}{note}")
    with atomic_path(out_dir / "metrics.json") as tmp:  # `dvc metrics show/diff` compare these
        tmp.write_text(json.dumps({m: {"miou_mean": _num(table.loc[m, "mIoU % mean"]), "miou_std": _num(table.loc[m, "mIoU % std"]),
                                       "seeds": int(table.loc[m, "seeds"])} for m in table.index}, indent=2))
    plots.save_figure(plots.per_class_iou_figure(results["iou"], title=f"Per-class IoU (%), mean over {n} seed(s)"),
                      out_dir / "per_class_iou.png")
    plots.save_figure(plots.curves_figure(results["curves"], title=f"Training curves (seed {seeds[0]})"),
                      out_dir / "training_curves.png")
    if results.get("gallery"):
        m, folder = results["gallery"]
        used_path = Path(folder) / "used_prototypes.json"
        used = np.array(read_json(used_path)["used"], dtype=bool) if used_path.is_file() else None
        fig = plots.prototype_gallery(*read_patches(folder), used=used,
                                      title=f"{m}: prototypes by class and scale (seed {seeds[0]})")
    else:
        fig = plots.message_figure("No prototype method in experiment.methods: no gallery.")
    plots.save_figure(fig, out_dir / "gallery.png")
    return {"methods": list(table.index), "best": str(table["mIoU % mean"].astype(float).idxmax()), "seeds": n}


def _num(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)
