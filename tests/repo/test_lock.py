"""The locked environment: requirements.lock pins every package with hashes, it covers environment.yml,
and the .venv/ that `make setup` builds holds exactly what it pins. No network: files and metadata only.

The lock is parsed here by its own small reader, independent of tools/lock_check.py, which `make setup`
uses; a test below checks that the two readers agree and that the checker's comparison catches each kind
of drift.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from scaleprotoseg.paths import repo_root

ROOT = repo_root(Path(__file__).parent)
LOCK = ROOT / "requirements.lock"
VENV = ROOT / ".venv"
PROJECT = "scaleprotoseg"


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries() -> dict[str, dict]:
    """{name: {"version", "hashes", "line"}} from requirements.lock, one entry per pinned package."""
    entries: dict[str, dict] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        body = line.strip()
        if not body or body.startswith("#"):
            current = None if not line.startswith(" ") else current
            continue
        if line.startswith((" ", "\t")):
            assert current is not None, f"requirements.lock: continuation line with no entry: {line!r}"
            hashes = re.findall(r"--hash=sha256:([0-9a-f]+)", body)
            assert hashes and all(len(h) == 64 for h in hashes), f"not a sha256 hash line: {line!r}"
            current["hashes"] += hashes
            continue
        name, sep, rest = body.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name), f"not pinned with ==: {line!r}"
        version = rest.split()[0].rstrip("\\")
        assert _name(name) not in entries, f"{name} pinned twice"
        current = entries[_name(name)] = {"version": version, "hashes": [], "line": body}
    return entries


def _pip_list() -> list[str]:
    spec = yaml.safe_load((ROOT / "environment.yml").read_text())
    lists = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(lists) == 1, "environment.yml: expected one pip: list under dependencies:"
    return [str(r) for r in lists[0]]


def _lock_check():
    spec = importlib.util.spec_from_file_location("lock_check", ROOT / "tools" / "lock_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_entry_is_pinned_with_a_sha256_hash():
    entries = _entries()
    # the closure includes torch's CUDA wheels, the installer and the build backend
    for must in ("torch", "torchvision", "nvidia-cublas", "triton", "pip", "setuptools", "wheel"):
        assert must in entries, f"requirements.lock lacks {must}"
    no_hash = [e["line"] for e in entries.values() if not e["hashes"]]
    assert not no_hash, f"entries without --hash=sha256: {no_hash}"
    for entry in entries.values():
        Version(entry["version"])  # an exact, valid version, not a range
    options = re.findall(r"^\s*(-e|-r|-c|--[a-z-]+url|--find-links)\b", LOCK.read_text(), re.MULTILINE)
    assert not options, f"requirements.lock must hold pinned entries only, not install options: {options}"


def test_lock_covers_environment_yml():
    entries = _entries()
    problems = []
    for raw in _pip_list():
        req = Requirement(raw)
        entry = entries.get(_name(req.name))
        if entry is None:
            problems.append(f"{raw}: not in the lock")
        elif not req.specifier.contains(entry["version"], prereleases=True):
            problems.append(f"{raw}: locked at {entry['version']}")
    assert not problems, f"requirements.lock is stale; run `make lock`: {problems}"
    assert entries["captum"]["version"] == "0.9.0"


def test_lock_check_reads_the_lock_like_this_test_and_catches_drift():
    lock_check = _lock_check()
    theirs = lock_check.read_lock(LOCK)
    ours = _entries()
    assert {k: (v, sorted(h)) for k, (v, h) in theirs.items()} == {
        k: (e["version"], sorted(e["hashes"])) for k, e in ours.items()
    }
    locked = {"numpy": "2.4.6", "torch": "2.14.1", "pip": "26.3"}
    same = dict(locked, **{PROJECT: "0.1.0"})
    assert lock_check.differences(locked, same) == {"missing": [], "extra": [], "version": []}
    drifted = {"numpy": "2.4.5", "pip": "26.3", "ruff": "0.1.0", PROJECT: "0.1.0"}
    assert lock_check.differences(locked, drifted) == {
        "missing": ["torch==2.14.1"],
        "extra": ["ruff==0.1.0"],
        "version": ["numpy: 2.4.5 installed, 2.4.6 locked"],
    }


def test_installed_environment_equals_the_lock():
    if Path(sys.prefix).resolve() != VENV.resolve():
        pytest.skip(f"runs inside the .venv built by `make setup`; this interpreter is {sys.prefix}")
    installed: dict[str, str] = {}
    for dist in importlib.metadata.distributions():  # the first of each name on sys.path is what imports
        installed.setdefault(_name(dist.metadata["Name"]), dist.version)
    assert installed.pop(PROJECT, None) is not None, f"{PROJECT} is not installed (make setup installs it -e)"
    locked = {name: e["version"] for name, e in _entries().items()}
    missing = sorted(set(locked) - set(installed))
    extra = sorted(f"{n}=={installed[n]}" for n in set(installed) - set(locked))
    wrong = sorted(f"{n}: {installed[n]} != {locked[n]}" for n in set(locked) & set(installed)
                   if installed[n] != locked[n])
    assert not (missing or extra or wrong), (
        f".venv differs from requirements.lock (`touch requirements.lock && make setup` syncs it): "
        f"missing {missing}, not locked {extra}, other version {wrong}"
    )
