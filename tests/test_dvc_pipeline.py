"""dvc.yaml parses with params.yaml and wires the methods as intended (DVC's own parser, no stage runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scaleprotoseg.paths import repo_root

DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


@pytest.mark.skipif(DVC is None, reason="dvc is not installed")
def test_dvc_graph_has_every_stage_and_the_groups_start_from_scaleprotoseg():
    out = subprocess.run([DVC, "dag", "--dot"], cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for m in ("deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups"):
        for stage in ("train", "project", "evaluate", "interpret"):
            assert f"{stage}@{m}" in text
    assert "\"project@scaleprotoseg\" -> \"train@scaleprotoseg_groups\"" in text
    assert "\"prepare\" -> \"train@deeplab\"" in text and "report" in text
