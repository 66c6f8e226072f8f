"""Atomic file writes: every output is written to a temporary and renamed into place.

A stage interrupted half-way therefore never leaves a truncated checkpoint, JSON or figure behind. Files and
folders get the permissions the user's umask gives (not the 0600 / 0700 of a temporary), and a write that runs
out of disk space ends with one `ArtifactError` naming the file (also on the console), whatever library was writing it (Pillow, for
one, reports a full disk as an unrelated AttributeError first).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ArtifactError, on_console
from .paths import repo_root

SCRATCH = ".tmp"  # the repository's folder for temporaries (git-ignored; never a DVC output)


def scratch_dir(path: Path) -> Path:
    """Where `path`'s temporary is written: the `.tmp/` folder of the repository holding `path` (so nothing
    temporary is ever inside a DVC output, even after a kill -9), or beside `path` outside a repository."""
    try:
        root = repo_root(path.parent)
    except FileNotFoundError:
        return path.parent
    folder = root / SCRATCH
    folder.mkdir(exist_ok=True)
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full(path: Path, exc: BaseException) -> ArtifactError:
    """The one message of a full disk, also written to the console (`errors.on_console`): papermill cannot save
    the notebook that would hold it."""
    return on_console(ArtifactError(f"could not write {path}: disk full (no space left on the device). The previous "
                                    f"{path.name}, if any, is unchanged; free space and run again (training resumes "
                                    "from its last checkpoint)."))


def _raise_if_full(path: Path, exc: Exception) -> None:
    """Raise the disk-full message for `path` when `exc` comes from a full disk (unless an inner write's
    message already said it); otherwise return, and the caller re-raises `exc`."""
    if _full(exc) and not isinstance(exc, ArtifactError):
        raise _disk_full(path, exc) from exc


def _tag(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def clean_stale(path: Path) -> None:
    """Remove temporaries a killed writer of `path` left behind (the same target only)."""
    places = [(path.parent, f".{path.name}.*.tmp"), (path.parent, f".{path.name}.old")]
    scratch = scratch_dir(path)
    if scratch != path.parent:
        places.append((scratch, f"{_tag(path)}.*.tmp"))
    for folder, pattern in places:
        for stale in folder.glob(pattern):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (in the repository's `.tmp/`); on success rename it onto `path`, else delete it.
    Stale temporaries of the same target (from a killed run) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    scratch = scratch_dir(path)
    prefix = f"{_tag(path)}." if scratch != path.parent else f".{path.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=scratch)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # a writer that truncates the file in place keeps this mode
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # a writer that replaced the file
        try:
            os.replace(tmp_path, path)
        except OSError as exc:  # another file system than the repository's: copy beside the target first
            if exc.errno != errno.EXDEV:
                raise
            near = path.with_name(f".{path.name}.{tmp_path.stem}.tmp")
            shutil.copyfile(tmp_path, near)
            os.replace(near, path)
    except Exception as exc:
        _raise_if_full(path, exc)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` as a whole. Folders a killed
    run left (`.<name>.*.tmp`, `.<name>.old`, full-size copies for a big dataset) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*path.parent.glob(f".{path.name}.*.tmp"), path.parent / f".{path.name}.old"]:
        if stale.is_dir():
            shutil.rmtree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except Exception as exc:
        _raise_if_full(path, exc)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp)
    return Path(path)
