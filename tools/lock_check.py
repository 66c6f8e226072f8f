"""Compare the running interpreter's packages with requirements.lock, the locked environment.

`make setup` runs it twice with the interpreter of .venv/:
  --target  before installing: the lock is for CPython 3.11 on Linux x86_64; refuse another interpreter
            with one clear message instead of pip's list of missing wheels and hash errors.
  --sync    after installing: uninstall the packages the lock lacks (what `pip install --no-deps -r` leaves
            behind from an older lock or a hand install), then fail unless every installed distribution
            has exactly its locked version and every locked package is installed.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path

TARGET_PYTHON = (3, 11)
TARGET_PLATFORM = ("linux", "x86_64")
# Installed editable by `make setup` (pip install --no-deps -e .), so never in the lock.
PROJECT = "scaleprotoseg"

_ENTRY = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """The comparable form of a distribution name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{normalized name: (version, sha256 hashes)} of a requirements file written by `make lock`."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for n, line in enumerate(path.read_text().replace("\\\n", " ").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENTRY.match(line)
        if m is None:
            sys.exit(f"{path}: entry {line.split()[0]!r} is not pinned with ==; rerun `make lock`.")
        name = normalize(m.group(1))
        if name in entries:
            sys.exit(f"{path}: {name} is pinned twice; rerun `make lock`.")
        entries[name] = (m.group(3), re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    if not entries:
        sys.exit(f"{path}: no pinned packages; run `make lock`.")
    return entries


def installed() -> dict[str, str]:
    """{normalized name: version} of the running interpreter, the first one on sys.path per name."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def differences(locked: dict[str, str], present: dict[str, str]) -> dict[str, list[str]]:
    """What keeps `present` from equalling `locked` (the project itself aside)."""
    present = {k: v for k, v in present.items() if k != PROJECT}
    return {
        "missing": sorted(f"{k}=={v}" for k, v in locked.items() if k not in present),
        "extra": sorted(f"{k}=={v}" for k, v in present.items() if k not in locked),
        "version": sorted(f"{k}: {present[k]} installed, {v} locked" for k, v in locked.items()
                          if k in present and present[k] != v),
    }


def check_target(lock: Path) -> None:
    here = (sys.version_info[:2], (sys.platform, platform.machine()))
    if here != (TARGET_PYTHON, TARGET_PLATFORM):
        sys.exit(
            f"{lock} is locked for CPython {'.'.join(map(str, TARGET_PYTHON))} on Linux x86_64; "
            f"{sys.executable} is Python {platform.python_version()} on {sys.platform} {platform.machine()}. "
            "Remove .venv/ and rerun `make setup PYTHON=python3.11` (or lock for this platform: edit "
            "tools/lock.py and run `make lock`)."
        )


def sync(lock: Path) -> None:
    locked = {k: v for k, (v, _) in read_lock(lock).items()}
    extra = [s.split("==")[0] for s in differences(locked, installed())["extra"]]
    if extra:
        print(f"removing packages that {lock.name} does not list: {' '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)
    problems = differences(locked, installed())
    if any(problems.values()):
        lines = [f"  {kind}: {item}" for kind, items in problems.items() for item in items]
        sys.exit(f"{sys.prefix} does not equal {lock}:\n" + "\n".join(lines)
                 + "\nRemove .venv/ and rerun `make setup`.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path, nargs="?", default=Path("requirements.lock"))
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--target", action="store_true", help="check the interpreter is the lock's target")
    mode.add_argument("--sync", action="store_true", help="remove unlocked packages, then check equality")
    args = ap.parse_args(argv)
    if not args.lock.is_file():
        sys.exit(f"{args.lock}: no such lock file; run `make lock` (needs the package index).")
    if args.target:
        check_target(args.lock)
    else:
        sync(args.lock)


if __name__ == "__main__":
    main()
