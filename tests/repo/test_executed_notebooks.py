"""The executed records that `dvc repro` writes show what they claim: the training curves as an image, and the
interpret stage's explorer through a link that resolves from where the executed notebook lies. Each notebook is
run with papermill exactly as dvc.yaml runs it (same flags, kernel working directory), in smoke mode."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from scaleprotoseg.paths import repo_root

pytestmark = pytest.mark.slow

ROOT = repo_root()
RECORDS = "reports/${experiment.dataset}"  # where dvc.yaml writes the executed notebooks and runs their kernels


def papermill_flags() -> list[str]:
    """The papermill options dvc.yaml runs every stage notebook with (e.g. `--cwd reports/<dataset>`)."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    words = [w.strip("'") for w in cmd.split()]
    i = words.index("papermill")
    flags = []
    for w in words[i + 1:]:
        if w.endswith(".ipynb"):
            break
        flags.append(w)
    return flags


def execute(notebook: str, out_dir: Path, **params) -> dict:
    """Run notebooks/<notebook> as dvc.yaml does, the record written to `out_dir`/<notebook>."""
    flags = [f if f != RECORDS else str(out_dir) for f in papermill_flags()]
    args = [sys.executable, "-m", "papermill", *flags, str(ROOT / "notebooks" / notebook), str(out_dir / notebook)]
    for k, v in {"smoke": True, **params}.items():
        args += ["-p", k, str(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg", "SCALEPROTOSEG_SMOKE": "1"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / notebook).read_text())


@pytest.fixture()
def record_dir():
    """A folder inside the repository's reports/ (the kernel's working directory must be inside the
    repository, as reports/ is under DVC), removed afterwards."""
    (ROOT / "reports").mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".test-records-", dir=ROOT / "reports"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cell_outputs(nb: dict, needle: str) -> list[dict]:
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and needle in "".join(c["source"]))
    return cell["outputs"]


def test_papermill_runs_the_kernel_where_the_record_is_written():
    flags = papermill_flags()
    assert "--cwd" in flags and flags[flags.index("--cwd") + 1] == RECORDS
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    assert f"'{RECORDS}/20_train_" in cmd  # the record is written where its kernel runs


@pytest.mark.parametrize("notebook,method", [("20_train.ipynb", "scaleprotoseg"), ("35_groups.ipynb", "scaleprotoseg_groups")])
def test_the_executed_training_notebook_shows_its_curves(record_dir, notebook, method):
    nb = execute(notebook, record_dir, method=method)
    outputs = cell_outputs(nb, "views.curves(")
    assert any("image/png" in o.get("data", {}) for o in outputs), outputs


def test_the_executed_interpret_notebook_links_to_an_explorer_that_exists(record_dir):
    out = record_dir
    nb = execute("50_interpret.ipynb", out, method="scaleprotoseg_groups")
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in cell_outputs(nb, "explorer_view("))
    links = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert links and all(link.endswith("explorer.html") for link in links), html
    for link in links:  # relative to the executed notebook's folder, as JupyterLab and a browser resolve it
        assert not Path(link).is_absolute() and (out / link).resolve().is_file(), link
