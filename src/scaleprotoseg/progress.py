"""Progress: a live bar on a terminal, one line per phase everywhere else.

- `tqdm(...)`: tqdm's plain bar, shown only when standard error is a terminal (a shell, `python -m …`).
  Inside a notebook kernel (papermill under `dvc repro`, JupyterLab) it is off, so executed notebooks hold no
  bar spam; a bare GPU machine without tqdm gets a silent stand-in (`make gpu-check` runs there).
- `phase_line(...)`: one line when a phase starts and one when it ends (with its time), written to the
  process's own standard error: under `dvc repro` that is the DVC log (papermill's kernel inherits it), so a
  long run shows `[train@scaleprotoseg-20220227] joint: 500 steps done in 1 min 02 s` and nothing else.
"""

from __future__ import annotations

import os
import sys
import time

try:
    from tqdm.std import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised by tests/tools/test_gpu_check.py in a subprocess
    _tqdm = None


def interactive() -> bool:
    """A live bar only where someone watches a terminal (never inside a notebook kernel or a log file)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


class _Silent:
    """The part of tqdm's interface this package uses, doing nothing but iterate."""

    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def tqdm(iterable=None, *args, disable: bool = False, **kwargs):
    """tqdm on a terminal; silent elsewhere (see the module docstring)."""
    if disable or _tqdm is None or not interactive():
        return _Silent(iterable)
    return _tqdm(iterable, *args, **kwargs)


def log_line(text: str) -> None:
    """One line to the process's standard error: under `dvc repro`, the DVC log. Inside a notebook kernel the
    line goes to the terminal that started the kernel only (the kernel keeps a copy of its original standard
    error), not into the executed notebook."""
    line = f"{time.strftime('%H:%M:%S')} {text}\n"
    original = getattr(sys.stderr, "_original_stdstream_copy", None)  # ipykernel's copy of the terminal's fd 2
    try:
        if isinstance(original, int):
            os.write(original, line.encode())
        else:
            stream = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
            stream.write(line)
            stream.flush()
    except (OSError, ValueError):  # a closed stream never stops a run
        pass


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class phase_line:
    """`with phase_line("train@protoseg-1", "joint", steps=500):` logs the start and the end with its time
    (or that it failed), one line each."""

    def __init__(self, where: str, phase: str, steps: int | None = None, enabled: bool = True):
        self.where, self.phase, self.steps, self.enabled = where, phase, steps, enabled

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.enabled:
            what = f"{self.steps} steps" if self.steps is not None else "started"
            log_line(f"[{self.where}] {self.phase}: {what}" + (" …" if self.steps is not None else ""))
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.enabled:
            took = duration(time.perf_counter() - self.t0)
            if exc_type is None:
                log_line(f"[{self.where}] {self.phase}: done in {took}")
            else:
                log_line(f"[{self.where}] {self.phase}: stopped after {took} ({exc_type.__name__})")
        return False
