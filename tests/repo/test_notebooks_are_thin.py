"""Notebooks hold no logic: no def/class, a tagged parameters cell whose `smoke` defaults to None (the real
artifacts for a person; smoke mode only when the tests ask), no outputs committed."""

import ast
import json
from pathlib import Path

import pytest

from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.table import STAGES

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("*.ipynb"))


def test_one_notebook_per_stage_of_the_stage_table():
    """notebooks/ holds exactly the stage table's notebooks, each named NN_verb_object in run order."""
    names = [p.name for p in NOTEBOOKS]
    assert sorted(s.notebook for s in STAGES.values()) == names
    assert len(set(names)) == len(STAGES)
    assert all(n[:2].isdigit() and n[2] == "_" for n in names)


@pytest.mark.parametrize("name", [n for n, s in STAGES.items() if s.module], ids=str)
def test_each_stage_notebook_calls_its_stage_with_the_tables_paths(name):
    """The notebook resolves its folders through `context.stage(<name>, ...)` with the table's path keys as
    parameters, and its function exists where the table says."""
    import importlib

    s = STAGES[name]
    assert callable(getattr(importlib.import_module(f"scaleprotoseg.stages.{s.module}"), s.function))
    code = "\n".join("".join(c["source"]) for c in json.loads((repo_root() / "notebooks" / s.notebook).read_text())["cells"]
                   if c["cell_type"] == "code")
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "stage"]
    assert calls and isinstance(calls[0].args[0], ast.Constant) and calls[0].args[0].value == name
    paths = next(k.value for k in calls[0].keywords if k.arg == "paths")
    assert {k.value for k in paths.keys} == set(s.paths), f"{s.notebook}: pass every path of the table, and only those"


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
