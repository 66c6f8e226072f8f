"""Stage 60, report: every method's metrics side by side with the paper's numbers (docs/method.md §9),
per-class IoU, training curves and the prototype gallery."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import plots
from ..artifacts import read_curves, read_patches
from ..errors import ArtifactError
from ..io import atomic_path, read_json, write_csv

PUBLISHED_MIOU = {
    "cityscapes": {"deeplab": 71.40, "protoseg": 67.54, "scaleprotoseg_groups": 68.97},
    "pascal": {"deeplab": 77.69, "protoseg": 71.98, "scaleprotoseg_groups": 71.80},
    "ade20k": {"deeplab": 34.00, "protoseg": 29.67, "scaleprotoseg_groups": 34.18},
}


def collect_results(methods: list[str], evaluate_dir: Path, train_report_dir: Path, train_dir: Path,
                    project_dir: Path | None = None, dataset: str = "embedded") -> dict:
    """Gather every method's metrics, prototype counts, timings and curves for the final report."""
    rows, iou, curves, notes = [], {}, {}, []
    published = PUBLISHED_MIOU.get(dataset, {})
    for m in methods:
        path = Path(evaluate_dir) / m / "summary.json"
        if not path.is_file():
            raise ArtifactError(f"{path} not found; run the evaluation stage (`dvc repro evaluate@{m}`).")
        met = read_json(path)
        summ_path = Path(train_dir) / m / "train_summary.json"
        summ = read_json(summ_path) if summ_path.is_file() else {}
        row = {"method": m, "mIoU %": met["miou"]}
        if published:
            row["paper mIoU %"] = published.get(m)
        row.update({
            "pixel acc. %": met["pixel_accuracy"],
            "prototypes": met.get("prototypes", 0),
            "prototypes used": met.get("prototypes_used", met.get("prototypes", 0)),
            "used %": met.get("prototypes_used_%", 100.0 if met.get("prototypes") else None),
            "zero group weights %": met.get("group_weights_zero_%"),
            "non-zero weights / group": met.get("nonzero_per_group"),
            "train steps": summ.get("steps"),
            "train s": summ.get("seconds"),
        })
        interp_path = Path(evaluate_dir).parent / "interpret" / m / "summary.json"
        interp = read_json(interp_path) if interp_path.is_file() else {}
        for key, col in (("consistency", "consistency %"), ("stability", "stability %"),
                         ("prototype_overlap", "prototype overlap %"), ("group_overlap", "group overlap %")):
            row[col] = interp.get(key)
        if interp.get("note") and interp["note"] not in notes:  # why consistency/stability are empty
            notes.append(interp["note"])
        rows.append(row)
        iou[m] = met["iou"]
        curves[m] = read_curves(Path(train_report_dir) / m / "dvclive")
    table = pd.DataFrame(rows).set_index("method")
    gallery = None
    if project_dir is not None:
        for m in ("scaleprotoseg_groups", "scaleprotoseg", "protoseg"):
            if m in methods and (Path(project_dir) / m / "patches.npz").is_file():
                gallery = (m, Path(project_dir) / m / "patches.npz")
                break
    return {"table": table, "iou": pd.DataFrame(iou), "curves": curves, "gallery": gallery, "notes": notes}


def write_report(results: dict, dataset: str, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    table = results["table"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, out_dir / "results.csv")
    note = ("\n\nThe paper's numbers (docs/method.md §9) are validation mIoU, mean of 3 runs; its ScaleProtoSeg figure is the "
            "grouped model after thresholding at 0.05; its DeepLab-v2 figure is the published one.\n"
            if "paper mIoU %" in table else
            "\n\nThis dataset is not one of the paper's: no published numbers to compare with.\n")
    with atomic_path(out_dir / "results.md") as tmp:
        notes = results.get("notes") or []  # why cells are empty (no part annotations, a black-box method)
        footnotes = "\n\n" + "\n".join(f"- {n}" for n in notes) if notes else ""
        tmp.write_text(f"# Results on `{dataset}`\n\n{table.to_markdown(floatfmt='.2f')}{footnotes}{note}")
    plots.save_figure(plots.per_class_iou_figure(results["iou"]), out_dir / "per_class_iou.png")
    plots.save_figure(plots.curves_figure(results["curves"]), out_dir / "training_curves.png")
    if results.get("gallery"):
        m, path = results["gallery"]
        fig = plots.prototype_gallery(*read_patches(Path(path).parent), title=f"{m}: prototypes by class and scale")
    else:
        fig = plots.message_figure("No prototype method in experiment.methods: no gallery.")
    plots.save_figure(fig, out_dir / "gallery.png")
    return {"methods": list(table.index), "best": str(table["mIoU %"].idxmax())}
