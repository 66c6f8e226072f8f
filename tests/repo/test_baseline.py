"""`make repro`'s baseline: the finished run saved as the DVC experiment `baseline`, so that the first
experiment's `dvc exp diff baseline` shows numbers and `dvc exp apply baseline` brings the baseline back —
checked with DVC itself on a tiny copy of the repository (the Makefile's own command line is run)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleprotoseg.config import set_key
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.smoke import SMOKE

from ..repo_copy import copy_repository

pytestmark = pytest.mark.slow
ROOT = repo_root()
BIN = Path(sys.executable).parent
DVC = shutil.which("dvc", path=str(BIN))


def run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert out.returncode == 0, f"{args}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def makefile_baseline_command() -> str:
    """The shell line `make repro` runs after `dvc repro` to save the baseline."""
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nrepro:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    line = next(x for x in recipe.splitlines() if "exp save" in x)
    return line.strip()


@pytest.mark.skipif(DVC is None, reason="dvc is not installed")
def test_the_first_experiment_compares_with_the_saved_baseline(tmp_path):
    repo = copy_repository(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(params, key, value)
    params["experiment"].update(methods=["deeplab"], groups=[], device="cpu")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seed = params["experiment"]["seeds"][0]
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"]):
        run(["git", *cmd], repo)
    stage = f"evaluate@deeplab-{seed}"
    run([DVC, "repro"], repo)  # the whole pipeline, as `make repro` runs it
    run(["bash", "-c", makefile_baseline_command()], repo)
    assert "baseline" in run([DVC, "exp", "list", "--name-only"], repo).stdout

    model = repo / f"artifacts/train/embedded/deeplab/seed-{seed}/model.pt"
    baseline_model = hashlib.sha256(model.read_bytes()).hexdigest()

    run([DVC, "exp", "run", "-S", "++presets.embedded.deeplab.steps=3", stage], repo)
    assert hashlib.sha256(model.read_bytes()).hexdigest() != baseline_model
    diff = run([DVC, "exp", "diff", "baseline", "--all"], repo).stdout  # --all: unchanged values too
    assert re.search(r"presets\.embedded\.deeplab\.steps\s+2\s+3", diff), diff  # the param, old and new
    assert re.search(r"miou\s+[\d.]+\s+[\d.]+", diff), diff                       # the metric, old and new numbers

    run([DVC, "exp", "apply", "baseline"], repo)  # the baseline's params and outputs back, from the cache
    assert hashlib.sha256(model.read_bytes()).hexdigest() == baseline_model
    assert yaml.safe_load((repo / "params.yaml").read_text())["presets"]["embedded"]["deeplab"]["steps"] == 2
    assert run([DVC, "status", stage], repo).stdout.strip().endswith("up to date.")
