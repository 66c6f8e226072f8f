"""Progress bars: tqdm when it is installed, a silent stand-in otherwise (a bare GPU machine has only
PyTorch and NumPy; `make gpu-check` runs there)."""

from __future__ import annotations

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - exercised by tests/test_gpu_check.py in a subprocess

    class tqdm:
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
