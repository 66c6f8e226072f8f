"""The code dependencies of dvc.yaml, generated: each stage depends on exactly the source files its notebook
can run (the import closure of the `scaleprotoseg` modules the notebook imports; see `closure`), or, for a
stage whose command is `python -m scaleprotoseg.<module>` (the params check), that module's closure.

    python -m scaleprotoseg.tools.dvc_deps --write   # rewrite the src/ deps of every stage in dvc.yaml
    python -m scaleprotoseg.tools.dvc_deps           # check only: exit 1 and show the difference if stale

Only the `- src/scaleprotoseg/...` lines of each stage's `deps:` are rewritten, in place; the rest of
dvc.yaml (comments, anchors, data dependencies) is left as written. A folder all of whose files are in the
closure is listed as the folder. A test fails while dvc.yaml is stale, as a lock file would.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from pathlib import Path

from ..closure import ROOT as PACKAGE_DIR
from ..closure import module_closure

SRC_PREFIX = "src/scaleprotoseg/"


def notebook_imports(path: Path) -> set[str]:
    """The scaleprotoseg modules a notebook imports (read from its code cells)."""
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    mods = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in mods if m.split(".")[0] == "scaleprotoseg"}


def notebook_closure(path: Path) -> set[Path]:
    return {f for m in notebook_imports(path) for f in module_closure(m)}


def compact(files: set[Path]) -> list[str]:
    """Repository-relative deps for `files`: a package folder whose every .py file is in `files` is one entry."""
    def whole(d: Path) -> bool:
        return all(f in files for f in d.rglob("*.py"))

    out = set()
    for f in files:
        top = f
        for parent in f.parents:  # the outermost whole folder below the package root
            if parent == PACKAGE_DIR or PACKAGE_DIR not in parent.parents:
                break
            if whole(parent):
                top = parent
        out.add(SRC_PREFIX + top.relative_to(PACKAGE_DIR).as_posix())
    return sorted(out)


_STAGE = re.compile(r"^  ([A-Za-z_][\w-]*):\s*$")
_NOTEBOOK = re.compile(r"notebooks/[\w.-]+\.ipynb")
_MODULE = re.compile(r"python -m (scaleprotoseg(?:\.\w+)+)")  # a stage that runs a module, not a notebook


def regenerate(text: str, repo: Path) -> str:
    """dvc.yaml's text with every stage's src/ deps replaced by its notebook's closure."""
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    block_notebook = None
    while i < len(lines):
        line = lines[i]
        if _STAGE.match(line):
            block_notebook = None
        m = _NOTEBOOK.search(line)
        if m and "papermill" in line:  # the stage's command: the notebook it runs
            block_notebook = m.group(0)
        elif (mod := _MODULE.search(line)) and "cmd:" in line:
            block_notebook = mod.group(1)
        stripped = line.lstrip()
        if stripped.startswith("- " + SRC_PREFIX):
            indent = line[: len(line) - len(stripped)]
            while i < len(lines) and lines[i].lstrip().startswith("- " + SRC_PREFIX):
                i += 1
            if block_notebook is None:
                raise SystemExit(f"dvc.yaml: src/ deps before any notebook at line {i}")
            files = (notebook_closure(repo / block_notebook) if block_notebook.endswith(".ipynb")
                     else set(module_closure(block_notebook)))
            out.extend(f"{indent}- {d}\n" for d in compact(files))
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m scaleprotoseg.tools.dvc_deps")
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml (default: check only)")
    ap.add_argument("--dvc-yaml", default="dvc.yaml", type=Path)
    a = ap.parse_args(argv)
    path = a.dvc_yaml.resolve()
    text = path.read_text()
    new = regenerate(text, path.parent)
    if new == text:
        print(f"{a.dvc_yaml}: code dependencies are current")
        return 0
    if a.write:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(path)
        print(f"{a.dvc_yaml}: code dependencies rewritten")
        return 0
    sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "dvc.yaml", "generated"))
    print(f"\n{a.dvc_yaml} is stale: run `python -m scaleprotoseg.tools.dvc_deps --write`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
