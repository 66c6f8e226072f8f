"""Which source files a piece of the pipeline runs: the import closure of a module inside this package.

Read from the source with `ast` (every `import` statement, at module level or inside a function), so it
also holds for imports that only run in some branches. Package `__init__.py` files count, since importing
`a.b.c` executes `a/__init__.py` and `a/b/__init__.py`. Two uses: a checkpoint's fingerprint covers exactly
the code that computed it (`code_version`), and a test checks that dvc.yaml lists these files as each
stage's dependencies.

Smoke mode is reached from `stages/context.py` only through `importlib` on purpose (`stages/smoke.py` and the
stage table): dvc.yaml never runs smoke mode, so its code is no dependency of any stage's outputs.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "scaleprotoseg"
ROOT = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The file of module `name` (`scaleprotoseg.x.y`) inside this package, or None if it is not one."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    rel = Path(*name.split(".")[1:])
    for cand in (ROOT / rel / "__init__.py", (ROOT / rel).with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def _imports(path: Path) -> set[str]:
    """Module names imported anywhere in `path` (relative imports resolved; `from m import x` may name a
    submodule x, so both m and m.x are returned when they exist)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


@cache
def module_closure(name: str) -> tuple[Path, ...]:
    """Sorted files of this package that importing `name` can execute, itself included."""
    seen: set[Path] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # the module and every parent package's __init__.py
            f = module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo.extend(_imports(f))
    return tuple(sorted(seen))


def code_version(*modules: str) -> str:
    """A short hash of the source files the given modules can run (their import closure)."""
    h = hashlib.sha256()
    files = sorted({f for m in modules for f in module_closure(m)})
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
