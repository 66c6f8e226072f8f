"""What every stage shares: the resolved configuration and folders of a stage notebook, smoke mode, and
small display helpers.

Each stage notebook has `smoke`, `seed` and path parameters, all `None` by default. Opened in JupyterLab
after `dvc repro`, a notebook therefore works on the pipeline's real artifacts: the seed is the first of
`experiment.seeds` and the paths are the pipeline's layout (`LAYOUT`). `smoke=True` (what the tests ask for,
through the `SCALEPROTOSEG_SMOKE=1` environment variable that `make test` sets) shrinks every size through
`SMOKE_OVERRIDES`, rebases every path into a fresh temporary folder and builds the upstream artifacts the
stage needs there, so a notebook runs on its own in seconds and never touches pipeline outputs. `dvc.yaml`
passes `smoke=False`, the seed and the real paths (relative to the repository DVC runs the stage in).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import RunConfig, load_config, method_names, read_params, seed_list, set_key
from ..errors import ArtifactError
from ..paths import repo_root
from .common import LAYOUT, layout, resolve

SMOKE_OVERRIDES = {
    "experiment.dataset": "embedded",
    "embedded.image_size": 48,
    "embedded.n_train": 6,
    "embedded.n_val": 3,
    "embedded.max_objects": 2,
    "presets.embedded.data.crop": 40,
    "presets.embedded.model.width": 8,
    "presets.embedded.runtime.log_every": 1,
    "presets.embedded.runtime.checkpoint_every": 1,
    "presets.embedded.runtime.val_every": 0,
    "presets.embedded.runtime.val_images": 2,
    "presets.embedded.deeplab.steps": 2,
    "presets.embedded.deeplab.batch_size": 2,
    "presets.embedded.eval.n_examples": 2,
    "presets.embedded.eval.explorer_images": 2,
    "presets.embedded.scaleprotoseg_groups.batch_size": 2,
    "presets.embedded.scaleprotoseg_groups.warmup_steps": 1,
    "presets.embedded.scaleprotoseg_groups.joint_steps": 2,
}
for _m in ("protoseg", "scaleprotoseg"):
    SMOKE_OVERRIDES.update({f"presets.embedded.{_m}.{k}": v for k, v in {
        "features": 8, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2}.items()})
    SMOKE_OVERRIDES[f"presets.embedded.project_{_m}.finetune_steps"] = 1


def load_params(params_path: str | Path, smoke: bool) -> dict:
    params = read_params(resolve(params_path))
    if smoke:
        for key, value in SMOKE_OVERRIDES.items():
            set_key(params, key, value)
    return params


SMOKE_ENV = "SCALEPROTOSEG_SMOKE"


def smoke_default(smoke: bool | None) -> bool:
    """A notebook's `smoke=None`: True only when the environment asks for it (`SCALEPROTOSEG_SMOKE=1`, what
    the tests set), so a person opening a notebook gets the real artifacts."""
    if smoke is not None:
        return bool(smoke)
    return os.environ.get(SMOKE_ENV, "0").strip().lower() not in ("", "0", "false", "no")


@dataclass
class StageContext:
    """What a stage notebook works with: the resolved config and its folders (absolute paths)."""

    cfg: RunConfig
    params: dict
    paths: dict[str, Path]
    root: Path
    smoke: bool

    def describe(self) -> pd.DataFrame:
        """The resolved configuration as a two-column table, for the notebook record."""
        flat = pd.json_normalize(self.cfg.to_dict(), sep=".").T.reset_index()
        flat.columns = ["key", "value"]
        flat["value"] = flat["value"].astype(str)
        return flat.set_index("key")


def stage(name: str, *, smoke: bool | None = None, params_path: str = "params.yaml", dataset: str | None = None,
          method: str = "deeplab", seed: int | None = None, paths: dict[str, str | None] | None = None,
          needs: tuple[str, ...] = ()) -> StageContext:
    """Resolve the config and folders of stage `name`.

    `paths` map a name to a layout key's folder (relative to the repository root, or absolute); a value of
    None takes the pipeline's layout for `DEFAULT_PATHS[name][key]`. `seed=None` is the first of
    `experiment.seeds`. With smoke mode (see `smoke_default`) the paths are rebased into a fresh temporary
    folder, every size shrinks (SMOKE_OVERRIDES) and the upstream artifacts of the stage are built there.
    Outside smoke mode, the paths named in `needs` must exist (else: run `dvc repro` first)."""
    smoke = smoke_default(smoke)
    params = load_params(params_path, smoke)
    if seed is None:
        seed = seed_list(params)[0]
    cfg = load_config(params, dataset=dataset, method=method, seed=int(seed))
    root = Path(tempfile.mkdtemp(prefix=f"scaleprotoseg-smoke-{name}-")) if smoke else repo_root()
    defaults = DEFAULT_PATHS.get(name, {})
    resolved = {}
    for k, v in (paths or {}).items():
        v = v if v is not None else layout(defaults[k], cfg.dataset, cfg.method, cfg.seed)
        resolved[k] = Path(v) if Path(v).is_absolute() else root / v
    if smoke:
        _smoke_inputs(name, cfg, params, root)
    else:
        missing = [k for k in needs if not resolved[k].exists()]
        if missing:
            raise ArtifactError(
                f"{name}: {', '.join(str(resolved[k]) for k in missing)} not found. Run the pipeline first "
                f"(`make repro` or `dvc repro`), or run this notebook with smoke=True for a self-contained demo.")
    return StageContext(cfg, params, resolved, root, smoke)


# The layout key each notebook path parameter defaults to.
DEFAULT_PATHS = {
    "prepare": {"data": "prepared", "report": "prepare_reports"},
    "report": {"report": "report"},
    "train": {"data": "prepared", "out": "train", "report": "train_reports"},
    "groups": {"data": "prepared", "out": "train", "report": "train_reports"},
    "project": {"data": "prepared", "train": "train", "out": "project", "report": "project_reports"},
    "evaluate": {"data": "prepared", "train": "train", "project": "project", "report": "evaluate_reports"},
    "interpret": {"data": "prepared", "project": "project", "report": "interpret_reports", "deeplab": "deeplab_train"},
    "export": {"data": "prepared", "train": "train", "project": "project", "out": "export"},
}


def _stage_module(name: str):
    """A stage module, for smoke mode only: imported with importlib, so that no stage counts the others as
    code it depends on (dvc.yaml never runs smoke mode; see `closure`). No stage imports this module (what
    they share with it is in `common`), so this runs no import in a circle."""
    return importlib.import_module(f"scaleprotoseg.stages.{name}")


def _smoke_inputs(name: str, cfg: RunConfig, params: dict, root: Path) -> None:
    """Build, under `root`, what stage `name` reads, with the same layout as the real pipeline."""
    prepare_dataset = _stage_module("prepare").prepare_dataset
    if name == "prepare":
        return
    p = {k: root / layout(k, cfg.dataset, cfg.method, cfg.seed) for k in LAYOUT}
    prepare_dataset(params, cfg.dataset, p["prepared"])
    if name == "report":
        for m in method_names(params):
            for seed in seed_list(params):
                _smoke_chain(load_config(params, dataset=cfg.dataset, method=m, seed=seed), root, upto="evaluate")
        return  # the report works without interpretability metrics (its columns stay empty)
    upto = {"train": None, "groups": None, "project": "train", "evaluate": "project", "interpret": "project", "export": "project"}[name]
    if cfg.start is not None:
        _smoke_chain(cfg.start, root, upto="project")
    if upto:
        _smoke_chain(cfg, root, upto=upto)
    if name == "interpret" and cfg.method != "deeplab":  # the Grad-CAM baseline of the same seed
        _smoke_chain(load_config(params, dataset=cfg.dataset, method="deeplab", seed=cfg.seed), root, upto="train")


def _smoke_chain(cfg: RunConfig, root: Path, upto: str) -> None:
    """Run train → project → evaluate for `cfg.method` under `root`, up to and including `upto`."""
    train, project = _stage_module("train").train, _stage_module("project").project
    evaluate_stage = _stage_module("evaluate").evaluate_stage
    p = {k: root / layout(k, cfg.dataset, cfg.method, cfg.seed) for k in LAYOUT}
    if (p["evaluate_reports"] / "summary.json").is_file() or (upto == "project" and (p["project"] / "model.pt").is_file()):
        return
    if cfg.start is not None:
        _smoke_chain(cfg.start, root, upto="project")
    train(cfg, p["prepared"], p["train"], p["train_reports"], progress=False, start_checkpoint=start_checkpoint(cfg, root))
    if upto in ("project", "evaluate"):
        project(cfg, p["prepared"], p["train"], p["project"], progress=False)
    if upto == "evaluate":
        evaluate_stage(cfg, p["prepared"], p["train"], p["project"], p["evaluate_reports"], progress=False)


def start_checkpoint(cfg: RunConfig, root: Path) -> Path | None:
    """The model `cfg.method` starts from (scaleprotoseg_groups: scaleprotoseg's projected model)."""
    return root / layout("project", cfg.dataset, cfg.start.method, cfg.seed) / "model.pt" if cfg.start is not None else None


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def read_table_if(path: str | Path):
    """A saved CSV table, or a note that this method has none."""
    if Path(path).is_file():
        return pd.read_csv(path, index_col=0)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show_if(path: str | Path):
    """Display a saved PNG, or say that this method has no such figure."""
    if Path(path).is_file():
        return show(path)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show(path: str | Path):
    """Display a saved PNG in a notebook (figures are drawn from saved artifacts)."""
    from IPython.display import Image

    return Image(filename=str(path))
