"""Stage 50, interpret: the interpretability metrics of a prototype model (docs/method.md §8) and its
figures, from saved artifacts only (never retrains)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .. import plots
from ..artifacts import read_patches
from ..atomic import atomic_path, read_json, write_csv
from ..config import RunConfig
from ..data.prepared import PreparedDataset, read_meta
from ..device import resolve_device
from ..interpretability import group_composition, scale_usage
from ..models.build import load_model
from ..stage_metrics import write_results


def interpret(cfg: RunConfig, data_root: Path, project_dir: Path, report_dir: Path, progress: bool = True,
              deeplab_dir: Path | None = None) -> dict:
    """Interpretability metrics (consistency, stability, overlaps, sparsity) and figures of a prototype model,
    from saved artifacts only (never retrains); black-box deeplab has none. Writes `summary.json`, the
    headline metrics through DVCLive (which `dvc metrics show/diff` compare), per-prototype and per-class
    tables, the figures and the interactive explorer (`explorer.html`). `deeplab_dir`: the DeepLab baseline
    of the same seed (`artifacts/train/<dataset>/deeplab/seed-<s>`), whose Grad-CAM maps the explanation figure and the
    explorer show beside the prototype / group maps (left out, and said so, when it is absent)."""
    from .. import interpretability as it
    from ..models.prototypes import prototype_names

    report_dir = Path(report_dir)
    info = {"method": cfg.method, "interpretable": cfg.method != "deeplab"}
    if cfg.method == "deeplab":
        info["note"] = ("deeplab is the black-box baseline: no prototypes, so no consistency, stability, sparsity, "
                        "overlap or prototype figures.")
        device = resolve_device(cfg.device)
        meta = read_meta(data_root)
        info.update(_faithfulness(cfg, None, _gradcam_model(deeplab_dir, device, meta.classes), data_root, device,
                                  report_dir / "details", progress))
        write_results(report_dir, info, "interpret", params=cfg.to_dict())
        with atomic_path(report_dir / "details" / "README.txt") as tmp:
            tmp.write_text("deeplab has no prototypes: no interpretability tables or figures.\n")
        with atomic_path(report_dir / "explorer.html") as tmp:
            tmp.write_text("<!doctype html><meta charset='utf-8'><title>deeplab</title><p>deeplab is the black-box "
                           "baseline: it has no prototypes to explore. Its Grad-CAM maps are shown in the prototype "
                           "methods' explorers.</p>\n")
        return info
    device = resolve_device(cfg.device)
    meta = read_meta(data_root)
    model, _, payload = load_model(Path(project_dir) / "model.pt", device, f"project@{cfg.method}", cfg, meta.classes)
    val = PreparedDataset(data_root, "val")
    names = prototype_names(model, meta.classes)
    proj = read_json(Path(project_dir) / "projection.json")
    pruned_from = proj.get("prototypes_before") if cfg.method == "protoseg" and "pruned" in proj else None
    t0 = time.perf_counter()
    res = it.evaluate_interpretability(model, val, cfg.data, device, seed=cfg.seed, names=names,
                                       max_images=cfg.eval.max_images, progress=progress, pruned_from=pruned_from)
    info.update(res.metrics)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    if not meta.has_parts:
        from ..data.sources import no_parts_note

        info["note"] = no_parts_note(meta.name)
    gradcam = _gradcam_model(deeplab_dir, device, meta.classes)
    info["gradcam"] = gradcam is not None
    if gradcam is None:
        info["gradcam_note"] = f"no DeepLab model in {deeplab_dir}: the figures have no Grad-CAM comparison"
    info.update(_faithfulness(cfg, model, gradcam, data_root, device, report_dir / "details", progress))
    usage = scale_usage(model, meta.classes)
    labels = _scale_names(cfg, usage.columns)
    write_results(report_dir, info, "interpret", params=cfg.to_dict(), plots={"scale_usage": (
        [{"scale": n, "share %": round(float(v), 4)} for n, v in zip(labels, usage.loc["all classes"].values)],
        "share %", "scale", "bar_horizontal")})
    write_csv(res.prototypes, report_dir / "details" / "prototypes.csv")
    write_csv(res.overlap, report_dir / "details" / "overlap.csv")
    _interpret_figures(model, cfg, meta, names, Path(project_dir), report_dir / "details", data_root, gradcam,
                       usage, labels)
    return info


def _faithfulness(cfg: RunConfig, model, gradcam, data_root: Path, device, details: Path, progress: bool) -> dict:
    """Are the explanations true (docs/method.md §13)? Deletion / insertion AUCs, relevance mass and pointing
    game of the prototype model's own map, Grad-CAM on it, random and inverted rankings, on
    `eval.faithfulness_images` seeded validation images: the headline keys (`faith_…`) and every explainer's
    means for summary.json, the rows in `details/faithfulness.csv`, the mean curves in
    `details/faithfulness.png`. `model` None (method deeplab): DeepLab's Grad-CAM, random and inverted, on
    the same images (measured there once, not again in each prototype method's stage)."""
    from ..explain import faithfulness as fa
    from ..explain.figures import faithfulness_figure

    n = cfg.eval.faithfulness_images
    if n <= 0 or (model is None and gradcam is None):
        return {"faithfulness_note": "not measured: eval.faithfulness_images is 0" if n <= 0 else
                "not measured: no DeepLab model to explain"}
    t0 = time.perf_counter()
    res = fa.evaluate_faithfulness(fa.explainers(model, gradcam if model is None else None), PreparedDataset(data_root, "val"), cfg.data,
                                   device, cfg.seed, n)
    write_csv(res.rows.set_index(["image", "class", "explainer"]), details / "faithfulness.csv")
    plots.save_figure(faithfulness_figure(res.curves, title=f"{cfg.method} (seed {cfg.seed}): deletion and insertion "
                                          f"curves, mean over the classes predicted on {n} seeded validation images"),
                      details / "faithfulness.png")
    return {**fa.headline(res.metrics), "faithfulness": res.metrics,
            "faithfulness_seconds": round(time.perf_counter() - t0, 2)}


def _gradcam_model(deeplab_dir: Path | None, device, classes):
    if deeplab_dir is None or not (Path(deeplab_dir) / "model.pt").is_file():
        return None
    from ..explain.gradcam import load_gradcam_model

    return load_gradcam_model(Path(deeplab_dir) / "model.pt", device, classes, option="the DeepLab baseline")


def _interpret_figures(model, cfg, meta, names, project_dir: Path, report_dir: Path, data_root: Path, gradcam,
                       usage, scale_labels) -> None:
    """The figures of the interpretability notebook, each saved as a PNG, and the explorer page."""
    saved = read_patches(project_dir)
    used = model.group_head.used_prototypes().cpu().numpy() if model.group_head is not None else None
    if saved is not None:
        fig = plots.prototype_gallery(*saved, used=used, group_weights=_group_weight_labels(model),
                                      title=f"{cfg.method}: prototypes by class and scale (source patches)")
        plots.save_figure(fig, report_dir / "gallery.png")
    plots.save_figure(plots.scale_usage_figure(usage, title=f"{cfg.method}: share of used prototype weight per scale",
                                               scale_labels=scale_labels), report_dir / "scale_usage.png")
    if model.group_head is not None:
        plots.save_figure(plots.group_composition_figure(*group_composition(model, meta.classes, names)),
                          report_dir / "group_composition.png")
    from ..explain import maps as explain

    device = next(model.parameters()).device
    val = PreparedDataset(data_root, "val")
    plots.save_figure(explain.explain_prediction(model, val, cfg.data, device, cfg.seed, cfg.method,
                                                 gradcam_model=gradcam, patches=saved), report_dir / "explanation.png")
    plots.save_figure(explain.failure_cases(model, val, cfg.data, device, max_images=cfg.eval.max_images), report_dir / "failure_cases.png")
    if saved is not None:
        fig = explain.nearest_prototypes(model, val, cfg.data, device, cfg.seed, *saved)
        plots.save_figure(fig, report_dir / "nearest_prototypes.png")
    from ..explain.explorer import write_explorer

    saliency = None
    if gradcam is not None:
        from ..explain.gradcam import gradcam_maps

        def saliency(x, classes):
            return gradcam_maps(gradcam, x, classes)
    write_explorer(report_dir.parent / "explorer.html", model, val, cfg.data, device, meta.classes, names,
                   saved[0] if saved is not None else None, saved[1] if saved is not None else None,
                   saliency=saliency, max_images=cfg.eval.explorer_images,
                   title=f"{cfg.method} on {meta.name} (seed {cfg.seed}): prototype explorer")


def _group_weight_labels(model) -> list[str] | None:
    """Per prototype, 'g<k>:<w>' for each group of its class that uses it (grouped model only)."""
    gh = model.group_head
    if gh is None:
        return None
    w, idx, valid = gh.weight.detach().cpu(), gh.index.cpu(), gh.valid.cpu()
    labels = [""] * model.prototypes.num_prototypes
    for c in range(gh.num_classes):
        for j in range(idx.shape[1]):
            if valid[c, j]:
                labels[int(idx[c, j])] = " ".join(f"g{g}:{float(w[c, g, j]):.2f}" for g in range(gh.groups) if w[c, g, j] > 0)
    return labels


def _scale_names(cfg: RunConfig, columns) -> list[str]:
    """Each prototype scale named by the ASPP dilation rate of its branch (`rate 2` …) when there is one scale
    per branch (ScaleProtoSeg); ProtoSeg's single scale keeps its name."""
    rates = list(cfg.model.aspp_rates)
    return [f"rate {r}" for r in rates] if len(columns) == len(rates) > 1 else [str(c) for c in columns]


def explorer_view(report_dir: Path, notebook_dir: Path | None = None, height: int = 760):
    """What a notebook displays for the explorer: a link to the page and the page itself in an IFrame (in
    JupyterLab), or a note when this method has none (deeplab)."""
    import urllib.parse

    from IPython.display import HTML, IFrame, Markdown

    page = Path(report_dir) / "explorer.html"
    if not page.is_file():
        return (Markdown("*No explorer for this method (deeplab has no prototypes).*"),)
    try:
        rel = os.path.relpath(page, notebook_dir or Path.cwd())
    except ValueError:  # another drive
        rel = str(page)
    size = page.stat().st_size / 2**20
    rel = urllib.parse.quote(Path(rel).as_posix())  # a URL: no quote or markup of a folder name reaches the HTML
    return HTML(f'<p><a href="{rel}" target="_blank">Open the explorer</a> ({size:.1f} MB, self-contained: '
                f'click a pixel to see its class, winning group and prototypes)</p>'), IFrame(rel, width="100%", height=height)
