"""Training stages on several processes: `torchrun` started from params (docs/method.md §11).

`experiment.gpus` (processes per machine) × `experiment.nodes` (machines) > 1 makes the train, groups and
project stages start themselves again under `torchrun` and wait for it, so `dvc repro` runs everything
either way. On one machine that is `torchrun --standalone --nproc_per_node=<gpus>`; on several, the stage on
the first machine prints the command to start on each of the others (same repository and data paths, a
shared file system for the outputs), and all meet at `experiment.rdzv_endpoint`.

The child processes read the resolved configuration from a JSON file written next to the outputs (so smoke
runs and overrides reach them unchanged) and run the stage's own module, `python -m
scaleprotoseg.stages.<stage> ...`, whose `__main__` block hands its stage function to `child`. So the stages
import this module and this module imports no stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..errors import StageError
from ..training import distributed


def processes(cfg: RunConfig) -> int:
    return cfg.gpus * cfg.nodes


def wanted(cfg: RunConfig) -> bool:
    """True when the configuration asks for several processes and this is not one of them yet."""
    return processes(cfg) > 1 and not distributed.under_torchrun()


def torchrun_command(cfg: RunConfig, stage: str, config_file: Path, paths: dict[str, str | None], progress: bool) -> list[str]:
    """The command every machine runs (`python -m torch.distributed.run` is `torchrun`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.gpus}"]
    if cfg.nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={cfg.nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={cfg.rdzv_endpoint}",
                f"--rdzv_id=scaleprotoseg-{stage}-{cfg.method}"]
    cmd += ["-m", f"scaleprotoseg.stages.{stage}", "--config", str(config_file)]
    for key, value in paths.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    if not progress:
        cmd.append("--no-progress")
    return cmd


def run(stage: str, cfg: RunConfig, paths: dict[str, str | Path | None], progress: bool = True) -> None:
    """Run `stage` (train | project) for `cfg` under torchrun; its output is printed here as it comes."""
    out = Path(paths["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".launch-{out.name}-", dir=out.parent))
    try:
        config_file = work / "config.json"
        config_file.write_text(json.dumps(cfg.to_dict()))
        cmd = torchrun_command(cfg, stage, config_file, {k: (None if v is None else str(v)) for k, v in paths.items()}, progress)
        print(f"[{stage}] {processes(cfg)} processes ({cfg.gpus} per machine × {cfg.nodes} machines): {' '.join(cmd[1:])}")
        if cfg.nodes > 1:
            print(f"[{stage}] start the same command on each of the other {cfg.nodes - 1} machines now.")
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        tail: list[str] = []
        for line in proc.stdout:
            print(line, end="")
            if line.startswith("[rank"):  # what the processes printed (torchrun prefixes their tracebacks)
                tail = (tail + [line])[-12:]
        if proc.wait() != 0:
            raise StageError(f"the {stage} stage failed under torchrun (exit {proc.returncode}); the processes' last "
                             "lines (the whole log is above):\n" + "".join(tail))
    finally:
        for f in work.glob("*"):
            f.unlink()
        work.rmdir()


def child(stage_fn: Callable[[RunConfig, argparse.Namespace], None], argv=None) -> None:
    """One process of a training stage under torchrun: `stage_fn(cfg, args)` with the configuration `run`
    wrote and the stage's paths (`args.data`, `.out`, `.report`, `.train`, `.start_from`, `.no_progress`)."""
    ap = argparse.ArgumentParser(description="One process of a training stage under torchrun (started by the stage).")
    ap.add_argument("--config", required=True)
    for key in ("data", "out", "report", "train", "start-from"):  # no prefix of a torchrun option (argparse abbreviates)
        ap.add_argument(f"--{key}")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = RunConfig.from_dict(json.loads(Path(a.config).read_text()))
    try:
        stage_fn(cfg, a)
    finally:
        distributed.close()
