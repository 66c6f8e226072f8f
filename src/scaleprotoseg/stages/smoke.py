"""Smoke mode and the tiny settings: the one place where sizes other than params.yaml's are written.

- `SMOKE`: what a stage notebook runs with under `smoke=True` (what the tests set through
  `SCALEPROTOSEG_SMOKE=1`): the embedded dataset shrunk to seconds.
- `TINY`: the unit tests' run configuration (`tests/conftest.py::tiny_cfg`).
- `shrink(dataset, methods)`: any preset, paper presets included, shrunk to seconds on a CPU (tiny trunk,
  32-px crops, a few steps per phase), for the tests that run a real dataset layout through the stages.

`build_inputs` builds, under a temporary root and with the pipeline's layout, the artifacts a stage reads, by
running the upstream stages' own functions (`table.STAGES`); what a root already holds complete (a prepared
dataset, a trained or projected model, an evaluation) is reused, so one root can serve many stages
(`context.smoke_roots`). `context` imports this module with importlib,
so that no stage counts smoke mode, its sizes or the other stages as code it depends on (dvc.yaml never runs
smoke mode; see `closure`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig, load_config, method_names, seed_list
from . import evaluate, prepare, project, train
from .layout import LAYOUT, layout
from .sizes import DVC_TINY, SMOKE, TINY, shrink  # noqa: F401  (re-exported)
from .table import CHAIN, STAGES, call_paths

_MODULES = {m.__name__.rpartition(".")[2]: m for m in (prepare, train, project, evaluate)}  # what smoke mode runs


def _function(name: str):
    s = STAGES[name]
    return getattr(_MODULES[s.module], s.function)


def _paths(cfg: RunConfig, root: Path) -> dict[str, Path]:
    start = cfg.start.method if cfg.start is not None else None
    return {k: root / layout(k, cfg.dataset, cfg.method, cfg.seed, start) for k in LAYOUT}


def _run(name: str, cfg: RunConfig, root: Path) -> None:
    where = _paths(cfg, root)
    paths = {key: where[lkey] for key, lkey in STAGES[name].paths.items()}
    _function(name)(cfg, progress=False, **call_paths(name, paths))


def build_inputs(name: str, cfg: RunConfig, params: dict, root: Path) -> None:
    """Build, under `root`, what stage `name` reads, with the same layout as the real pipeline."""
    s = STAGES[name]
    keys = set(s.inputs.values())
    if not keys and not s.fan_in:
        return
    prepared = _paths(cfg, root)["prepared"]
    if not (prepared / "meta.json").is_file():  # written last, and the folder appears whole (atomic_dir)
        _function("prepare")(params, cfg.dataset, prepared)
    if s.fan_in:  # the report works without interpretability metrics (its columns stay empty)
        for m in method_names(params):
            for seed in seed_list(params):
                chain(load_config(params, dataset=cfg.dataset, method=m, seed=seed), root, upto=CHAIN[-1])
        return
    if cfg.start is not None:
        chain(cfg.start, root, upto="project")
    reached = [CHAIN.index(k) for k in keys if k in CHAIN]
    if reached:
        chain(cfg, root, upto=CHAIN[max(reached)])
    if "deeplab_train" in keys and cfg.method != "deeplab":  # the Grad-CAM baseline of the same seed
        chain(load_config(params, dataset=cfg.dataset, method="deeplab", seed=cfg.seed), root, upto="train")


# What each step of CHAIN writes last: its presence means the step finished (the writes are atomic).
LAST_WRITTEN = {"train": "train_summary.json", "project": "projection.json", "evaluate_reports": "summary.json"}


def chain(cfg: RunConfig, root: Path, upto: str) -> None:
    """Run train (groups) → project → evaluate for `cfg.method` under `root`, up to and including `upto`,
    skipping each step that `root` already holds finished."""
    p = _paths(cfg, root)
    steps = CHAIN[: CHAIN.index(upto) + 1]
    if (p[upto] / LAST_WRITTEN[upto]).is_file():
        return
    for step in steps:
        if (p[step] / LAST_WRITTEN[step]).is_file():
            continue
        if step == "train":
            if cfg.start is not None:
                chain(cfg.start, root, upto="project")
            _run("groups" if cfg.start is not None else "train", cfg, root)
        else:
            _run("project" if step == "project" else "evaluate", cfg, root)
