"""A working copy of the repository (tracked and untracked-but-not-ignored files) for tests that run DVC on
it, so they never touch the real workspace: the rehearsal's own copy (tools/rehearse.py)."""

from __future__ import annotations

from pathlib import Path

from scaleprotoseg.paths import repo_root
from scaleprotoseg.tools.rehearse import copy_repository as _copy

ROOT = repo_root(Path(__file__).parent)


def copy_repository(dst: Path) -> Path:
    return _copy(ROOT, dst)
