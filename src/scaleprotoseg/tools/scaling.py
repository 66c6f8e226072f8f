"""How the per-image stages grow with the number of images: prepare, project, evaluate and interpret on 1×, 4×
and 16× the images of one preset at its true sizes (the rehearsal's model and counts), each stage in a
process of its own, so its time and peak memory are its own.

    python -m scaleprotoseg.tools.scaling --preset pascal      (make scaling; SCALING_ARGS="--preset em …")

The model is trained once (the rehearsal's one update per phase) on the 1× data and then used at every
size; the raw data of each size is written in the preset's download layout (`raw_layouts.py`), `--base`
training and `--base` validation images per factor. What grows with the images is measured with all of
them: the projection pass over the projection split, the evaluation and the consistency / stability pass over
the whole validation split (`eval.max_images: 0`); the fine-tuning and the explorer's images are fixed counts,
and the faithfulness curves (a fixed count too, measured by the rehearsal) are left out. Per stage and size: seconds, seconds per image (the projection: its pass only, as the stage
records it), the peak resident memory of the stage's process. Time per image must stay flat and memory must
not grow with the count: every pass streams its images. The table and a figure go to
`rehearsal/scaling-<preset>.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from ..atomic import atomic_path
from ..config import set_key
from ..paths import repo_root
from ..stages.layout import layout
from .measure import measured
from .raw_layouts import SIZES, write
from .rehearse import random_resnet101, rehearsal_params

STAGES = ("prepare", "project", "evaluate", "interpret")


def stage_main(argv) -> None:
    """One stage in this process: `--run STAGE PARAMS_JSON ROOT METHOD`."""
    from ..config import load_config
    from ..stages.layout import LAYOUT, layout
    from ..stages.prepare import prepare_dataset
    from ..stages.table import STAGES as TABLE
    from ..stages.table import call_paths

    stage, params_file, root, method = argv
    params, root = json.loads(Path(params_file).read_text()), Path(root)
    dataset = params["experiment"]["dataset"]
    cfg = load_config(params, method=method)
    where = {k: root / layout(k, dataset, method, cfg.seed) for k in LAYOUT}
    if stage == "prepare":
        prepare_dataset(params, dataset, where["prepared"])
        return
    from ..stages import evaluate, interpret, project, train

    spec = TABLE[stage]
    fn = getattr({"train": train, "project": project, "evaluate": evaluate, "interpret": interpret}[spec.module], spec.function)
    paths = {key: where[lkey] for key, lkey in spec.paths.items()}
    kwargs = call_paths(stage, paths)
    if stage == "interpret":
        kwargs["deeplab_dir"] = None  # the Grad-CAM baseline is another model: not part of this pass
    fn(cfg, progress=False, **kwargs)


def scaling(preset: str, work: Path, method: str = "scaleprotoseg", base: int = 2, factors=(1, 4, 16),
            size: tuple | None = None, extra: dict | None = None, stages=STAGES, log=print) -> list[dict]:
    """Rows (factor, stage, images, seconds, s/image, max RSS MB) of the measurement (see the docstring) of
    `stages` (the upstream ones run too, unmeasured); `size` and `extra` (overrides) are for the tests."""
    root = repo_root()
    work.mkdir(parents=True, exist_ok=True)
    params = rehearsal_params(yaml.safe_load((root / "params.yaml").read_text()), preset, 20220227)
    set_key(params, "experiment.methods", [method])
    set_key(params, f"presets.{preset}.eval.max_images", 0)
    set_key(params, f"presets.{preset}.eval.faithfulness_images", 0)  # a fixed count, measured by the rehearsal
    for k, v in (extra or {}).items():
        set_key(params, k, v)
    model = params["presets"][preset]["model"]
    if model.get("backbone") == "resnet101" and not model.get("pretrained_path") and model.get("pretrained"):
        set_key(params, f"presets.{preset}.model.pretrained_path", str(random_resnet101(work / "resnet101-random.pth")))
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    log_file = open(work / "stages.log", "w")
    rows = []
    seed = params["experiment"]["seeds"][0]
    for f in factors:
        n = base * f
        run_root = work / f"x{f}"
        raw = write(preset, run_root / "raw", n, n, size)
        set_key(params, f"data_sources.{preset}.root", str(raw))
        pfile = run_root / "params.json"
        pfile.write_text(json.dumps(params))
        plan = (["prepare", "train"] if f == factors[0] else ["prepare"]) + [s for s in STAGES[1:] if s in stages]
        if f != factors[0]:
            link = run_root / "artifacts" / "train"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(work / f"x{factors[0]}" / "artifacts" / "train", target_is_directory=True)
        for stage in plan:
            log_file.write(f"\n===== {stage} ×{f}\n")
            log_file.flush()
            cmd = [sys.executable, "-m", "scaleprotoseg.tools.scaling", "--run", stage, str(pfile), str(run_root), method]
            seconds, rss, pss, code = measured(cmd, root, env, log_file)
            if code != 0:
                raise SystemExit(f"scaling: {stage} at {f}× failed (exit {code}); see {work / 'stages.log'}")
            if stage not in stages:
                continue
            val = len(json.loads((run_root / "artifacts" / "prepared" / preset / "meta.json").read_text())["splits"]["val"])
            images = {"prepare": 2 * n if preset != "em" else n + 10, "project": n, "evaluate": val, "interpret": val}[stage]
            per = seconds / images
            if stage == "project":
                proj = json.loads((run_root / layout("project", preset, method, seed) / "projection.json").read_text())
                per = proj["projection_pass_seconds"] / images
            row = {"factor": f, "stage": stage, "images": images, "seconds": round(seconds, 1),
                   "s_per_image": round(per, 3), "max_rss_mb": round(rss), "peak_pss_mb": round(pss)}
            rows.append(row)
            log(f"[scaling {preset}] {f}× {stage}: {images} images, {seconds:.0f} s ({per:.2f} s/image), "
                f"max RSS {rss:.0f} MB")
    return rows


def marginal(rows: list[dict], stage: str) -> list[tuple[int, float]]:
    """(images, seconds per additional image since the previous size) of `stage`: start-up cancels out."""
    rs = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["images"])
    totals = [(r["images"], r["s_per_image"] * r["images"]) for r in rs]  # the projection's pass, else wall time
    return [(n1, (t1 - t0) / (n1 - n0)) for (n0, t0), (n1, t1) in zip(totals, totals[1:])]


def figure(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for stage in STAGES:
        rs = [r for r in rows if r["stage"] == stage]
        if rs:
            m = marginal(rows, stage)
            if m:
                axes[0].plot([n for n, _ in m], [v for _, v in m], "o-", label=stage)
            axes[1].plot([r["images"] for r in rs], [r["max_rss_mb"] / 1024 for r in rs], "o-", label=stage)
    for ax, ylabel in zip(axes, ("seconds per additional image", "peak RSS of the stage (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("images in the pass")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    """Per stage and size: images, seconds, seconds per image (start-up included; the projection: its pass),
    the marginal seconds per image from the previous size (start-up cancels out), peak RSS."""
    lines = ["| stage | images | s | s / image | marginal s / image | max RSS GB |", "|---|---|---|---|---|---|"]
    for stage in STAGES:
        extra = dict(marginal(rows, stage))
        for r in sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["factor"]):
            m = f"{extra[r['images']]:.2f}" if r["images"] in extra else ""
            lines.append(f"| {stage} | {r['images']} | {r['seconds']:.0f} | {r['s_per_image']:.2f} | {m} | "
                         f"{r['max_rss_mb'] / 1024:.2f} |")
    return "\n".join(lines)


def small_trunk(preset: str, method: str = "scaleprotoseg") -> dict:
    """Overrides for the tests' tiny model (`stages.sizes.shrink`) at the preset's image sizes, leaving the
    counts this measurement sets and the preset's loader workers as they are."""
    from ..stages.sizes import shrink  # not smoke: this process must not import torch (measure.py)

    left = ("_steps", "val_images", "log_every", "n_examples", "num_workers")
    return {k: v for k, v in shrink(preset, methods=(method,)).items() if not k.endswith(left)}


def render(rows: list[dict], preset: str, method: str, out: Path, name: str | None = None) -> None:
    """The figure, the JSON and the markdown table of a measurement under `out` (scaling-<name>.*; name: the
    preset)."""
    h, w = SIZES[preset]
    name = name or preset
    figure(rows, f"{name} at {h}×{w}, {method}: time per image and peak memory against the number of images",
           out / f"scaling-{name}.png")
    with atomic_path(out / f"scaling-{name}.json") as tmp:
        tmp.write_text(json.dumps(rows, indent=1))
    with atomic_path(out / f"scaling-{name}.md") as tmp:
        tmp.write_text(markdown(rows) + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run"]:
        stage_main(argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="pascal", choices=sorted(SIZES))
    ap.add_argument("--method", default="scaleprotoseg", choices=["protoseg", "scaleprotoseg"])
    ap.add_argument("--base", type=int, default=2, help="training and validation images at 1×")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES,
                    help="the stages measured (the ones upstream of them run unmeasured)")
    ap.add_argument("--small-trunk", action="store_true",
                    help="the tests' tiny model (`small_trunk`) on the preset's images and loader workers: a long "
                         "series of images in minutes, for what a pass keeps per image rather than the trunk's cost")
    ap.add_argument("--work", default="rehearsal", help="folder of the results (relative to the repository)")
    a = ap.parse_args(argv)
    out = Path(a.work) if Path(a.work).is_absolute() else repo_root() / a.work
    name = f"{a.preset}-small" if a.small_trunk else a.preset
    rows = scaling(a.preset, out / f"scaling-{name}", a.method, a.base, tuple(a.factors),
                   extra=small_trunk(a.preset, a.method) if a.small_trunk else None, stages=tuple(a.stages))
    render(rows, a.preset, a.method, out, name)
    print(markdown(rows))


if __name__ == "__main__":
    main()
