"""A full disk: the project's message reaches the console `dvc repro` shows (the process's own stderr), not only
the executed notebook, which papermill then cannot save."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaleprotoseg import atomic
from scaleprotoseg.errors import ArtifactError
from scaleprotoseg.models import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture()
def kernel_like_stderr(monkeypatch):
    """As in a notebook kernel: sys.stderr goes into the notebook, sys.__stderr__ is still the console."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())


def test_a_full_disk_while_writing_json_names_the_file_on_the_console(tmp_path, monkeypatch, capfd, kernel_like_stderr):
    target = tmp_path / "summary.json"
    atomic.write_json(target, {"miou": 1.0})
    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(ArtifactError, match=r"could not write .*summary\.json.*disk full"):
        atomic.write_json(target, {"miou": 2.0})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"miou": 1.0}  # the previous file is unchanged
    err = capfd.readouterr().err
    assert "ArtifactError: could not write" in err and "summary.json" in err and "disk full" in err


def test_a_full_disk_while_saving_a_checkpoint_is_on_the_console_once(tmp_path, monkeypatch, capfd, kernel_like_stderr):
    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(ArtifactError, match=r"could not write .*model\.pt.*disk full"):
        checkpoint.save_checkpoint(tmp_path / "model.pt", torch.nn.Linear(2, 2), {}, phase="train", step=1)
    err = capfd.readouterr().err
    assert err.count("could not write") == 1 and "model.pt" in err


@pytest.mark.slow  # starts a subprocess
def test_the_message_reaches_the_console_of_papermill(tmp_path):
    """Under papermill the kernel's own stderr is the console's (what DVC shows when the notebook cannot be saved)."""
    nbformat = pytest.importorskip("nbformat")
    papermill = Path(sys.executable).with_name("papermill")
    if not papermill.exists():
        pytest.skip("papermill is not installed")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from scaleprotoseg.errors import ArtifactError, on_console\n"
        "try:\n    raise on_console(ArtifactError('could not write probe.pt: disk full'))\n"
        "except ArtifactError:\n    pass  # the notebook goes on: only the console can show the message\n")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([str(papermill), "--no-progress-bar", str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb")],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ArtifactError: could not write probe.pt: disk full" in out.stderr
