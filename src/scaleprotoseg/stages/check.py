"""The pipeline's first stage: every parameter of every stage checked once, before any other stage runs.

    python -m scaleprotoseg.stages.check [--params params.yaml] [--stamp artifacts/params.checked]

DVC pastes some values of params.yaml into the shell commands of dvc.yaml (`${experiment.dataset}`, the
matrix items `${item.method}` and `${item.seed}`), and deletes a stage's previous outputs before running it.
So a bad value must be refused before DVC reaches any other stage: every stage depends on this one's stamp,
so a failed check stops `dvc repro` (and `dvc exp run`) here, with nothing run and nothing deleted.

The check: each value DVC interpolates is a plain name or number (letters, digits, `_`, `-`, `.`: no quote,
space or shell metacharacter), `experiment.dataset` a preset, `methods` / `groups` / `export` known method
names, `seeds` non-negative integers, and `load_config` succeeds for every method × seed (every section of
the running preset, the launcher keys), with the running dataset's source section. The stamp's content does
not depend on the values, so while the params are valid it never changes and re-runs nothing downstream.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import (
    data_source,
    embedded_spec,
    export_names,
    load_config,
    method_names,
    read_params,
    seed_list,
)
from ..errors import ConfigError
from ..schema import section

STAMP = "artifacts/params.checked"
STAMP_TEXT = "params.yaml checked by `python -m scaleprotoseg.stages.check` (this file never changes)\n"
SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# experiment keys whose values DVC pastes into the commands of dvc.yaml (directly or as matrix items)
INTERPOLATED = ("dataset", "methods", "groups", "seeds", "export")


def _plain(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not SAFE.fullmatch(str(value)):
        raise ConfigError(f"{where} is {value!r}: DVC pastes it into the stages' shell commands, so it must be a plain "
                          "name or number (letters, digits, '_', '-', '.'; no quote, space or shell character).")


def check_interpolated(params: Mapping) -> None:
    """Every value of `INTERPOLATED` is a plain word (checked before what they mean: a quote never reaches a message
    that a shell might see as more than text)."""
    exp = section(params, "experiment")
    for key in INTERPOLATED:
        if key not in exp:
            continue
        value = exp[key]
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            _plain(v, f"experiment.{key}" + (f"[{i}]" if isinstance(value, list) else ""))


def check(params_path: str | Path = "params.yaml") -> list[tuple[str, int]]:
    """Check params.yaml as every stage of dvc.yaml will read it; the (method, seed) runs it checked."""
    params = read_params(params_path)
    check_interpolated(params)
    dataset = section(params, "experiment").get("dataset")
    presets = section(params, "presets")
    if dataset not in presets:
        raise ConfigError(f"experiment.dataset is {dataset!r}; presets exist for {sorted(presets)}.")
    methods, seeds = method_names(params), seed_list(params)
    export_names(params, dataset)
    runs = [(m, s) for m in methods for s in seeds]
    for method, seed in runs:
        load_config(params, dataset=dataset, method=method, seed=seed)
    if dataset == "embedded":
        embedded_spec(params)
    elif dataset in section(params, "data_sources"):
        data_source(params, dataset)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check params.yaml for every stage of dvc.yaml (the pipeline's first stage).")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stamp", default=STAMP, help="written when the check passes (its content never changes)")
    a = ap.parse_args(argv)
    try:
        runs = check(a.params)
    except ConfigError as exc:
        print(f"params.yaml refused (no stage ran, no output was touched): {exc}", file=sys.stderr)
        return 1
    stamp = Path(a.stamp)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file() or stamp.read_text() != STAMP_TEXT:
        stamp.write_text(STAMP_TEXT)
    print(f"params.yaml: {len(runs)} runs checked ({', '.join(f'{m}-{s}' for m, s in runs)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
