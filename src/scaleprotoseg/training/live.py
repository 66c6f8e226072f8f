"""Training curves through DVCLive, one series per phase (`warmup/loss`, `joint/loss`, `finetune/loss`, …)
on one step axis, so the phase boundaries show in `dvc plots`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class LiveLogger:
    """Curves to DVCLive (metrics.json + plots/metrics/*.tsv) so `dvc plots` and `dvc exp show` read them.

    The previous run's complete curves are set aside (`.<dir>.previous`, beside the folder, outside the DVC
    output) while a run writes new ones: a run that fails puts them back (`abort`), one that succeeds drops
    them (`end`); after a kill -9 the set-aside copy is still the last complete one and is kept."""

    def __init__(self, directory: Path, params: dict | None = None):
        from dvclive import Live

        from ..stage_metrics import flat_params

        self.dir = Path(directory)
        self.previous = self.dir.with_name(f".{self.dir.name}.previous")
        if self.dir.exists():
            if self.previous.exists():  # a killed run's partial curves: the set-aside copy is the complete one
                shutil.rmtree(self.dir)
            else:
                os.replace(self.dir, self.previous)
        self.live = Live(str(directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        self.live.log_params(flat_params(params or {}))

    def __call__(self, step: int, metrics: dict) -> None:
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, float(v))
        self.live.make_summary()

    def end(self) -> None:
        self.live.end()
        if self.previous.exists():
            shutil.rmtree(self.previous)

    def abort(self) -> None:
        """The run failed: its partial curves go, the previous complete ones come back."""
        if self.previous.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
            os.replace(self.previous, self.dir)
