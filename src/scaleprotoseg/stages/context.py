"""What a stage notebook works with: its resolved configuration and folders.

Each stage notebook has `smoke`, `seed` and path parameters, all `None` by default. Opened in JupyterLab
after `dvc repro`, a notebook therefore works on the pipeline's real artifacts: the seed is the first of
`experiment.seeds` and the paths are the pipeline's layout (`table.STAGES` names each stage's folders,
`layout.LAYOUT` where they are). `smoke=True` (what the tests ask for, through the `SCALEPROTOSEG_SMOKE=1`
environment variable that `make test` sets) shrinks every size (`smoke.SMOKE`), rebases every path into a
fresh temporary folder and builds the upstream artifacts the stage needs there, so a notebook runs on its own
in seconds and never touches pipeline outputs. With `SCALEPROTOSEG_SMOKE_ROOT` set (the tests set it to one
folder per test session), the upstream artifacts are built in, or reused from, that shared folder instead,
and the stage's own outputs go to a fresh subfolder of it: notebooks never re-train the same tiny models,
and no notebook writes where another reads. `dvc.yaml` passes `smoke=False`, the seed and the real paths
(relative to the repository DVC runs the stage in).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import RunConfig, load_config, read_params, seed_list, set_key
from ..errors import ArtifactError
from ..paths import repo_root
from .layout import layout, resolve

SMOKE_ENV = "SCALEPROTOSEG_SMOKE"
SMOKE_ROOT_ENV = "SCALEPROTOSEG_SMOKE_ROOT"  # smoke mode's shared folder of upstream artifacts (one test session)


def _smoke():
    """The smoke module, imported with importlib: dvc.yaml never runs smoke mode, so its sizes and chain are
    no code dependency of any stage (see `closure`)."""
    return importlib.import_module("scaleprotoseg.stages.smoke")


def _spec(name: str):
    """Stage `name`'s entry of the stage table, imported with importlib: under dvc.yaml, which passes every
    path, the table only checks that the inputs exist and never changes what a stage computes, so adding or
    editing a stage re-runs no other stage."""
    return importlib.import_module("scaleprotoseg.stages.table").spec(name)


def load_params(params_path: str | Path, smoke: bool) -> dict:
    params = read_params(resolve(params_path))
    if smoke:
        for key, value in _smoke().SMOKE.items():
            set_key(params, key, value)
    return params


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
    root: Path  # where the inputs are: the repository, or smoke mode's (shared) temporary folder
    smoke: bool

    def describe(self) -> pd.DataFrame:
        """The resolved configuration as a two-column table, for the notebook record."""
        flat = pd.json_normalize(self.cfg.to_dict(), sep=".").T.reset_index()
        flat.columns = ["key", "value"]
        flat["value"] = flat["value"].astype(str)
        return flat.set_index("key")


def smoke_roots(name: str) -> tuple[Path, Path]:
    """Smoke mode's folders for stage `name`: (where its inputs are built, where its own outputs go). One fresh
    temporary folder for both, or with `SCALEPROTOSEG_SMOKE_ROOT` set, that shared folder (upstream artifacts
    built once, reused by every later stage: `smoke.chain` skips what exists) and a fresh subfolder of it
    for the outputs, so that a stage's outputs are never the inputs another stage reads."""
    shared = os.environ.get(SMOKE_ROOT_ENV, "").strip()
    if not shared:
        root = Path(tempfile.mkdtemp(prefix=f"scaleprotoseg-smoke-{name}-"))
        return root, root
    root = Path(shared)
    (root / "stages").mkdir(parents=True, exist_ok=True)
    return root, Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root / "stages"))


def stage(name: str, *, smoke: bool | None = None, params_path: str = "params.yaml", dataset: str | None = None,
          method: str = "deeplab", seed: int | None = None, paths: dict[str, str | None] | None = None) -> StageContext:
    """Resolve the config and folders of stage `name` (an entry of `table.STAGES`).

    `paths` map a path key to a folder (relative to the repository root, or absolute); a value of None takes
    the pipeline's layout for the stage's key. `seed=None` is the first of `experiment.seeds`. With smoke
    mode (see `smoke_default`) the paths are rebased into a fresh temporary folder, every size shrinks and the
    upstream artifacts of the stage are built there (in the shared `SCALEPROTOSEG_SMOKE_ROOT` when set, the
    stage's own folders then in a fresh subfolder of it: see `smoke_roots`). Outside smoke mode, the stage's required inputs must
    exist (else: run `dvc repro` first)."""
    s = _spec(name)
    smoke = smoke_default(smoke)
    params = load_params(params_path, smoke)
    if seed is None:
        seed = seed_list(params)[0]
    cfg = load_config(params, dataset=dataset, method=method, seed=int(seed))
    root, own = smoke_roots(name) if smoke else (repo_root(), repo_root())
    start = cfg.start.method if cfg.start is not None else None
    resolved = {}
    for k, v in (paths or {}).items():
        if v is None:
            if k not in s.paths:
                raise KeyError(f"stage {name!r} has no path {k!r}; its paths are {', '.join(s.paths)} (stages/table.py).")
            v = layout(s.paths[k], cfg.dataset, cfg.method, cfg.seed, start)
        resolved[k] = Path(v) if Path(v).is_absolute() else (root if k in s.inputs else own) / v
    if smoke:
        _smoke().build_inputs(name, cfg, params, root)
    else:
        missing = [k for k in s.needs if k in resolved and not resolved[k].exists()]
        if missing:
            raise ArtifactError(
                f"{name}: {', '.join(str(resolved[k]) for k in missing)} not found. Run the pipeline first "
                f"(`make repro` or `dvc repro`), or run this notebook with smoke=True for a self-contained demo.")
    return StageContext(cfg, params, resolved, root, smoke)
