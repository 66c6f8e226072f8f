"""Notebooks hold no logic: no def/class, a tagged parameters cell whose `smoke` defaults to None (the real
artifacts for a person; smoke mode only when the tests ask), no outputs committed."""

import ast
import json
from pathlib import Path

import pytest

from scaleprotoseg.paths import repo_root

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("*.ipynb"))


def test_one_notebook_per_stage():
    names = [p.stem for p in NOTEBOOKS]
    assert names == sorted(names) and len(names) == 9
    assert [n[:2] for n in names] == ["10", "20", "30", "35", "40", "50", "60", "70", "80"]  # 80: explain any image


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(path: Path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = "".join(params[0]["source"]) if len(params) == 1 else ""
    assert "smoke = None" in source and "smoke = True" not in source
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "commit notebooks without outputs"
        tree = ast.parse("".join(cell["source"]))
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defs, f"{path.name}: move {defs[0].name} into the package"
