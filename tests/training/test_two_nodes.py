"""Two machines, simulated on this one: `experiment.nodes: 2` on loopback, two torchrun agents (gloo).

The stage runs as `dvc repro` runs it on the first machine: it starts its torchrun agent, prints the command
for the other machine and waits. The test then starts that printed command as the second machine would (the
same repository and paths) from the file the stage wrote beside its outputs, and both agents meet at `experiment.rdzv_endpoint` through torchrun's c10d
rendezvous. The model must equal the model of one process with the same global batch (README, "Several
machines (SLURM)")."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import subprocess
import sys
import time

import pytest
import torch

from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.launch import join_file

from .test_distributed import assert_same_model, config, run_train

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
              pytest.mark.slow]  # torchrun

STAGE = """
import json, sys
from pathlib import Path
from scaleprotoseg.config import RunConfig
from scaleprotoseg.stages.train import train
cfg = RunConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
summary = train(cfg, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), progress=False)
print("PROCESSES", summary["processes"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def printed_command(stage: subprocess.Popen, timeout: float = 120) -> list[str]:
    """The command the first machine prints for the others (the line after '… run now:')."""
    deadline, seen = time.monotonic() + timeout, []
    for line in stage.stderr:
        seen.append(line)
        if line.rstrip().endswith("run now:"):
            return shlex.split(next(stage.stderr))
        if time.monotonic() > deadline:
            break
    raise AssertionError("the stage printed no command for the other machines:\n" + "".join(seen[-20:]))


def test_two_nodes_on_loopback_train_the_model_of_one(params, tiny_dataset, tmp_path):
    one = run_train(params, tiny_dataset, tmp_path, "deeplab", 1)
    cfg = dataclasses.replace(config(params, "deeplab", 1), nodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}",
                              rdzv_timeout=120)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "two-nodes"
    env = {**os.environ, "PYTHONPATH": str(repo_root() / "src")}
    log = open(tmp_path / "first.log", "w+")  # a file: an undrained pipe could block the stage
    first = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path / "cfg.json"), str(tiny_dataset), str(out / "train"),
                              str(out / "report")], stdout=log, stderr=subprocess.PIPE, text=True, env=env)
    second = None
    try:
        cmd = printed_command(first)
        assert cmd[0] == "python" and "--nnodes=2" in cmd and f"--rdzv_endpoint={cfg.rdzv_endpoint}" in cmd
        # what a batch script on the other machine runs: the command the first machine wrote beside its outputs
        join = join_file(out / "train")
        assert shlex.join(cmd) in join.read_text()
        bin_dir = os.path.dirname(sys.executable)  # `python` of this environment, as an activated venv gives
        second = subprocess.Popen(["sh", str(join)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**env, "PATH": bin_dir + os.pathsep + env.get("PATH", "")}, cwd="/")
        log2, _ = second.communicate(timeout=300)
        _, err1 = first.communicate(timeout=120)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert second.returncode == 0, log2[-3000:]
    assert first.returncode == 0, err1[-3000:]
    assert not join.exists()  # removed when the stage ends
    log.seek(0)
    assert "PROCESSES 2" in log.read()
    assert_same_model(one / "train" / "train.pt", out / "train" / "train.pt", "two nodes")


def test_the_slurm_example_waits_for_the_file_the_stage_writes():
    script = repo_root() / "examples" / "slurm" / "stage_on_2_nodes.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    # the script's path of the join command is launch.join_file of the stage's output folder (layout.py)
    from scaleprotoseg.stages.layout import layout

    for kind in ("train", "project"):
        out = layout(kind, dataset="pascal", method="scaleprotoseg", seed=7)
        assert str(join_file(out)) == f"artifacts/{kind}/pascal/scaleprotoseg/.join-seed-7.sh"
    assert "JOIN=artifacts/$kind/$DATASET/$method/.join-seed-$seed.sh" in text
    assert "experiment.rdzv_endpoint=$HEAD:$PORT" in text and "experiment.nodes=$SLURM_JOB_NUM_NODES" in text
