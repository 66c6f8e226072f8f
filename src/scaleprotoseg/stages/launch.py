"""Training stages on several processes: `torchrun` started from params (docs/method.md §11).

`experiment.gpus` (processes per machine) × `experiment.nodes` (machines) > 1 makes the train, groups and
project stages start themselves again under `torchrun` and wait for it, so `dvc repro` runs everything
either way. On one machine that is `torchrun --standalone --nproc_per_node=<gpus>`; on several, the stage on
the first machine prints the command to start on each of the others (same repository and data paths, a
shared file system for the outputs), and all meet at `experiment.rdzv_endpoint`; the stage gives up after
`experiment.rdzv_timeout` seconds if they have not. torchrun runs in its own process group, stopped on every
exit path of the stage (a failure, SIGTERM, Ctrl-C), and on Linux dies with it even after a SIGKILL (a
parent-death signal), as do its processes; the launch folder is removed on exit, or at the next start.

The child processes read the resolved configuration from a JSON file written next to the outputs (so smoke
runs and overrides reach them unchanged) and run the stage's own module, `python -m
scaleprotoseg.stages.<stage> ...`, whose `__main__` block hands its stage function to `child`. So the stages
import this module and this module imports no stage.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_path
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
                f"--rdzv_id=scaleprotoseg-{stage}-{cfg.method}", f"--rdzv_conf=join_timeout={cfg.rdzv_timeout + 60}"]
    cmd += ["-m", f"scaleprotoseg.stages.{stage}", "--config", str(config_file)]
    for key, value in paths.items():
        if value is not None:
            cmd += [f"--{key}", str(value)]
    if not progress:
        cmd.append("--no-progress")
    return cmd


def set_death_signal(sig: int = signal.SIGKILL) -> None:
    """Linux: this process gets `sig` when its parent dies (even by SIGKILL), so nothing outlives the stage."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def join_file(out: Path) -> Path:
    """Where the first machine writes the command for the others while it waits (`nodes` > 1), beside the
    stage's output folder, so a batch script on the other machines can wait for it and run it (README,
    "Several machines (SLURM)"); removed when the stage ends."""
    return Path(out).parent / f".join-{Path(out).name}.sh"


def clean_stale(out: Path) -> None:
    """Remove the launch folders (and the join command) of `out` that a killed run left behind."""
    for stale in out.parent.glob(f".launch-{out.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    join_file(out).unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop torchrun and every process it started (its own process group): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(grace)
            os.killpg(proc.pid, 0)  # the workers may outlive torchrun for a moment
        except subprocess.TimeoutExpired:
            continue
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.5)


@contextmanager
def _signals_raise():
    """SIGTERM (what DVC and schedulers send) raises here, so the `finally` that stops torchrun runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise StageError(f"stopped by signal {signum}; the training processes were stopped too.")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(stage: str, cfg: RunConfig, paths: dict[str, str | Path | None], progress: bool = True) -> None:
    """Run `stage` (train | project) for `cfg` under torchrun; its output is printed here as it comes. torchrun
    and its processes die with this one (own process group, stopped on every exit path; a death signal on
    Linux), and give up when the processes have not all met after `experiment.rdzv_timeout` seconds."""
    out = Path(paths["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    work = Path(tempfile.mkdtemp(prefix=f".launch-{out.name}-", dir=out.parent))
    proc = None
    try:
        config_file = work / "config.json"
        config_file.write_text(json.dumps(cfg.to_dict()))
        src = str(Path(__file__).resolve().parents[2])
        cmd = torchrun_command(cfg, stage, config_file, {k: (None if v is None else str(v)) for k, v in paths.items()}, progress)
        print(f"[{stage}] {processes(cfg)} processes ({cfg.gpus} per machine × {cfg.nodes} machines): {' '.join(cmd[1:])}")
        if cfg.nodes > 1:  # on the console (DVC shows stderr), not only in the executed notebook
            join = " ".join(shlex.quote(c) for c in ["python", *cmd[1:]])
            with atomic_path(join_file(out)) as tmp:
                tmp.write_text(f"#!/bin/sh\n# written by the {stage} stage on the first machine; removed when it ends\n"
                               f"cd {shlex.quote(str(Path.cwd()))} && PYTHONPATH={shlex.quote(src)}${{PYTHONPATH:+:$PYTHONPATH}} "
                               f"exec {join}\n")
            print(f"[{stage}] waiting up to {cfg.rdzv_timeout} s (experiment.rdzv_timeout) for the other {cfg.nodes - 1} "
                  f"machine(s) at {cfg.rdzv_endpoint}; the command is also in {join_file(out)}; on each of them, in the "
                  f"same repository, run now:\n  " + join, file=sys.stderr, flush=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        tail: list[str] = []
        with _signals_raise():
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True,  # the child only calls prctl: no lock is taken
                                    preexec_fn=lambda: set_death_signal(signal.SIGTERM))  # noqa: PLW1509
            reader = threading.Thread(target=_pump, args=(proc, tail), daemon=True)
            reader.start()
            deadline = time.monotonic() + cfg.rdzv_timeout
            while proc.poll() is None:
                if deadline is not None and any(work.glob("started-*")):
                    deadline = None  # the processes met: training is under way
                elif deadline is not None and time.monotonic() > deadline:
                    raise StageError(
                        f"the {stage} stage gave up: its {processes(cfg)} processes did not all meet at "
                        f"{cfg.rdzv_endpoint} within {cfg.rdzv_timeout} s (experiment.rdzv_timeout). Start the command "
                        f"printed above on the other {cfg.nodes - 1} machine(s), or set experiment.nodes: 1."
                        if cfg.nodes > 1 else f"the {stage} stage gave up: its processes did not start within "
                        f"{cfg.rdzv_timeout} s (experiment.rdzv_timeout).")
                time.sleep(0.2)
            reader.join(5)
        if proc.returncode != 0:
            raise StageError(f"the {stage} stage failed under torchrun (exit {proc.returncode}); the processes' last "
                             "lines (the whole log is above):\n" + "".join(tail))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
        join_file(out).unlink(missing_ok=True)


def _pump(proc: subprocess.Popen, tail: list[str]) -> None:
    for line in proc.stdout:
        print(line, end="")
        if line.startswith("[rank"):  # what the processes printed (torchrun prefixes their tracebacks)
            tail[:] = (tail + [line])[-12:]


def child(stage_fn: Callable[[RunConfig, argparse.Namespace], None], argv=None) -> None:
    """One process of a training stage under torchrun: `stage_fn(cfg, args)` with the configuration `run`
    wrote and the stage's paths (`args.data`, `.out`, `.report`, `.train`, `.start_from`, `.no_progress`)."""
    ap = argparse.ArgumentParser(description="One process of a training stage under torchrun (started by the stage).")
    ap.add_argument("--config", required=True)
    for key in ("data", "out", "report", "train", "start-from"):  # no prefix of a torchrun option (argparse abbreviates)
        ap.add_argument(f"--{key}")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    set_death_signal()  # dies with torchrun, which dies with the stage
    cfg = RunConfig.from_dict(json.loads(Path(a.config).read_text()))
    marker = Path(a.config).parent / f"started-{os.environ.get('RANK', '0')}"
    if marker.parent.is_dir():  # the stage's machine: the processes met (the other machines may not share it)
        marker.touch()
    try:
        stage_fn(cfg, a)
    finally:
        distributed.close()
