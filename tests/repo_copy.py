"""A working copy of the repository (tracked and untracked-but-not-ignored files) for tests that run DVC on
it, so they never touch the real workspace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scaleprotoseg.paths import repo_root

ROOT = repo_root(Path(__file__).parent)


def copy_repository(dst: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    for f in (x.decode() for x in files if x):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst
