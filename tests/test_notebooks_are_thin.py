"""Notebooks hold no logic: no def/class, a tagged parameters cell with smoke=True, no outputs committed."""

import ast
import json
from pathlib import Path

import pytest

from scaleprotoseg.paths import repo_root

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("*.ipynb"))


def test_one_notebook_per_stage():
    names = [p.stem for p in NOTEBOOKS]
    assert names == sorted(names) and len(names) == 8
    assert [n[:2] for n in names] == ["10", "20", "30", "35", "40", "50", "60", "70"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(path: Path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "smoke = True" in "".join(params[0]["source"])
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks without outputs"
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defs, f"{path.name}: move {defs[0].name} into the package"
