"""Processes a training stage starts under torchrun die with the stage, and its launch folder goes: a real
two-process gloo run on the CPU whose parent is killed (SIGTERM, SIGKILL), and a two-machine run without a
second machine, which gives up after `experiment.rdzv_timeout` with the command to start elsewhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.errors import StageError
from scaleprotoseg.stages.train import train

from ..conftest import TINY_OVERRIDES

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and sys.platform.startswith("linux")),
                                reason="torch.distributed on Linux (/proc) is needed")
ROOT = Path(__file__).resolve().parents[2]
LONG = {**TINY_OVERRIDES, "presets.embedded.deeplab.steps": 100000, "presets.embedded.deeplab.batch_size": 4,
        "presets.embedded.runtime.checkpoint_every": 100000, "experiment.gpus": 2}
PARENT = """
import json, sys
from scaleprotoseg.config import load_config
from scaleprotoseg.stages.train import train
cfg = load_config("params.yaml", overrides=json.loads(sys.argv[1]))
train(cfg, sys.argv[2], sys.argv[3] + "/train", sys.argv[3] + "/report", progress=False)
"""


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line names `text` (zombies excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(proc.name))
    return found


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_the_stage_kills_torchrun_and_its_workers(tiny_dataset, tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, json.dumps(LONG), str(tiny_dataset), str(out)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(list(out.glob(".launch-train-*/started-*"))) == 2 or parent.poll() is not None, 300,
                 "both training processes")
        assert parent.poll() is None, parent.stderr.read().decode()[-3000:]
        assert len(processes_naming(str(out))) >= 3  # torchrun and its two workers
        time.sleep(2)  # training under way
        parent.send_signal(sig)
        parent.wait(60)
        wait_for(lambda: not processes_naming(str(out)), 60, "torchrun and its workers to die")
        if sig == signal.SIGTERM:  # the stage cleaned up after itself
            assert "stopped by signal" in parent.stderr.read().decode()
            assert not list(out.glob(".launch-*"))
        else:  # nothing could run in the killed process: the next start removes its launch folder (below)
            assert list(out.glob(".launch-train-*"))
            stale_start(out, tiny_dataset)
    finally:
        if parent.poll() is None:
            parent.kill()


def stale_start(out: Path, data: Path) -> None:
    """A new start of the same stage removes the killed run's launch folder (here one that gives up quickly)."""
    cfg = load_config(ROOT / "params.yaml", overrides={**LONG, "experiment.gpus": 1, "experiment.nodes": 2,
                                                       "experiment.rdzv_timeout": 5,
                                                       "experiment.rdzv_endpoint": f"localhost:{free_port()}"})
    with pytest.raises(StageError, match="gave up"):
        train(cfg, data, out / "train", out / "report", progress=False)
    assert not list(out.glob(".launch-*"))


@pytest.mark.slow
def test_two_machines_without_the_second_give_up_after_the_timeout_with_the_command(tiny_dataset, tmp_path, capfd):
    port = free_port()
    cfg = load_config(ROOT / "params.yaml", overrides={**LONG, "experiment.gpus": 1, "experiment.nodes": 2,
                                                       "experiment.rdzv_timeout": 15,
                                                       "experiment.rdzv_endpoint": f"localhost:{port}"})
    out = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(StageError, match=r"did not all meet at localhost:\d+ within 15 s \(experiment\.rdzv_timeout\)"):
        train(cfg, tiny_dataset, out / "train", out / "report", progress=False)
    assert 15 <= time.monotonic() - start < 90
    err = capfd.readouterr().err
    assert "on each of them, in the same repository, run now:" in err and "--nnodes=2" in err  # on the console
    wait_for(lambda: not processes_naming(str(out)), 30, "torchrun to die")
    assert not list(out.glob(".launch-*"))
    with socket.socket() as s:  # nothing holds the rendezvous port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("localhost", port))


def test_rdzv_timeout_is_checked():
    from scaleprotoseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"experiment\.rdzv_timeout must be at least 1"):
        load_config(ROOT / "params.yaml", overrides={"experiment.rdzv_timeout": 0})
