"""A training process killed for real (SIGKILL of a subprocess: no exception, no cleanup) mid-phase and inside
checkpoint writes resumes to exactly the weights and curves of an uninterrupted run and leaves no temporary.

The kills are placed deterministically by hooks the child installs before training: right after a step's
loss reached the DVCLive logger (mid-phase), after a checkpoint's temporary was fully written but before
`os.replace` moves it onto its target (so a real, complete temporary is orphaned), or right after that rename."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaleprotoseg.artifacts import read_curves
from scaleprotoseg.data.prepared import DatasetMeta, write_prepared
from scaleprotoseg.models.checkpoint import load_checkpoint
from scaleprotoseg.paths import repo_root

from ..conftest import CLASSES, TINY_OVERRIDES, tiny_samples

pytestmark = pytest.mark.slow  # training subprocesses, killed and resumed

REPO = repo_root(Path(__file__).parent)
STEPS = 12
# Run-time knobs only (no part of what the weights depend on): resume states at steps 4 and 8, a loss per step.
OVERRIDES = {**TINY_OVERRIDES, "presets.embedded.deeplab.steps": STEPS,
             "presets.embedded.runtime.checkpoint_every": 4, "presets.embedded.runtime.log_every": 1}

CHILD = r"""
import json, os, signal, sys
from pathlib import Path

args = json.loads(sys.argv[1])
from scaleprotoseg.config import load_config
from scaleprotoseg.stages import train as stage

kill = args["kill"]

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if kill is not None and kill["at"] == "log":  # right after `step`'s loss was handed to DVCLive
    logged = stage.LiveLogger.__call__
    def call(self, step, metrics):
        logged(self, step, metrics)
        if step == kill["step"] and any(k.endswith("/loss") for k in metrics):
            die()
    stage.LiveLogger.__call__ = call
elif kill is not None and kill["at"] == "replace":  # at the n-th rename onto `target`: just before, or just after
    replace, seen = os.replace, [0]
    def guarded(src, dst, *a, **k):
        if os.path.basename(os.fspath(dst)) == kill["target"]:
            seen[0] += 1
            if seen[0] == kill["nth"]:
                if kill.get("after"):
                    replace(src, dst, *a, **k)
                else:  # the temporary is complete but never moved
                    print("ORPHANED", os.fspath(src), flush=True)
                die()
        return replace(src, dst, *a, **k)
    os.replace = guarded

cfg = load_config(args["params"], overrides=args["overrides"])
summary = stage.train(cfg, Path(args["data"]), Path(args["out"]), Path(args["report"]), progress=False)
print("SUMMARY", json.dumps(summary), flush=True)
"""


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    """A snapshot of the package and params.yaml for every child of this module: a checkpoint's fingerprint
    hashes the source, so an edit of the working tree between a kill and its resume would (rightly) discard
    the resume state and make the test fail for a reason that is not the code's."""
    root = tmp_path_factory.mktemp("code")
    shutil.copytree(REPO / "src" / "scaleprotoseg", root / "src" / "scaleprotoseg",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    meta = DatasetMeta(name="tiny", classes=CLASSES,
                       splits={"train": tuple(f"img{i:03d}" for i in range(6)), "val": tuple(f"img{i:03d}" for i in range(6, 9))},
                       parts={"square": ("whole",)})
    root = tmp_path_factory.mktemp("data") / "prepared"
    write_prepared(root, meta, tiny_samples(9))
    return root


@pytest.fixture(scope="module")
def train_in_child(code, data):
    def run(out: Path, report: Path, kill: dict | None = None) -> tuple[int, str]:
        """Train in a fresh Python process (cwd: the run's folder); its return code and output."""
        env = {**os.environ, "PYTHONPATH": str(code / "src")}
        args = {"params": str(code / "params.yaml"), "overrides": OVERRIDES, "data": str(data), "out": str(out),
                "report": str(report), "kill": kill}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], cwd=out.parent, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            log, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, log

    return run


@pytest.fixture(scope="module")
def reference(train_in_child, tmp_path_factory):
    """One uninterrupted run (a subprocess too, like the killed ones): its out and report folders."""
    base = tmp_path_factory.mktemp("reference")
    rc, log = train_in_child(base / "train", base / "reports")
    assert rc == 0, log
    assert not hidden(base / "train", base / "reports"), hidden(base / "train", base / "reports")
    return base / "train", base / "reports"


def killed(train_in_child, out, report, kill) -> tuple[str, Path | None]:
    """Run until the hook kills the process; its output and the temporary it orphaned, if any."""
    rc, log = train_in_child(out, report, kill)
    assert rc == -signal.SIGKILL, log
    assert not (out / "model.pt").exists(), log
    tmp = Path(log.split("ORPHANED ", 1)[1].split("\n", 1)[0]) if "ORPHANED " in log else None
    return log, tmp


def leftovers(*folders: Path) -> list[Path]:
    """Temporaries (`*.tmp`, `.*.tmp`, files or folders) and `*.old` anywhere under `folders`."""
    return sorted({p for f in folders for pattern in ("*.tmp", ".*.tmp", "*.old", ".*.old") for p in f.rglob(pattern)})


def hidden(*folders: Path) -> list[Path]:
    """Anything whose name starts with a dot under `folders` (every temporary this package makes does)."""
    return sorted(p for f in folders for p in f.rglob(".*"))


def resume_step(out: Path) -> int | None:
    path = out / "resume_train.pt"
    return torch.load(path, weights_only=True)["step"] if path.is_file() else None


def assert_matches_reference(reference, out: Path, report: Path) -> None:
    """model.pt equals the uninterrupted run's; nothing temporary is left; every step is logged once."""
    ref, got = load_checkpoint(reference[0] / "model.pt")["state_dict"], load_checkpoint(out / "model.pt")["state_dict"]
    assert ref.keys() == got.keys()
    for k in ref:
        if ref[k].is_floating_point():
            assert torch.allclose(ref[k], got[k], atol=1e-6), k
        else:
            assert torch.equal(ref[k], got[k]), k
    want, have = read_curves(reference[1] / "dvclive"), read_curves(report / "dvclive")
    assert want["train/loss"]["step"].tolist() == list(range(1, STEPS + 1))
    assert sorted(want) == sorted(have)
    for name in want:  # each step exactly once: none lost to a kill, none logged twice
        assert have[name]["step"].tolist() == want[name]["step"].tolist(), name
        assert have[name].iloc[:, -1].tolist() == pytest.approx(want[name].iloc[:, -1].tolist(), rel=1e-5), name
    assert not leftovers(out, report), leftovers(out, report)
    assert not hidden(out, report), hidden(out, report)
    assert not list(out.glob("resume_*.pt")), sorted(out.iterdir())  # a finished run keeps no resume state


def test_sigkill_mid_phase_and_at_checkpoint_writes_then_resume_matches_an_uninterrupted_run(
        train_in_child, reference, tmp_path):
    """One run killed five times, each kill at a later point than the last, then run to completion."""
    out, report = tmp_path / "train", tmp_path / "reports"
    # 1. inside the resume state's write at step 8: its complete temporary is orphaned, step 4's state is intact
    log, orphan = killed(train_in_child, out, report, {"at": "replace", "target": "resume_train.pt", "nth": 2})
    assert orphan is not None and orphan.parent == out and orphan.name.startswith(".resume_train.pt."), (orphan, log)
    assert torch.load(orphan, weights_only=True)["step"] == 8
    assert resume_step(out) == 4 and leftovers(out) == [orphan]

    # 2. resumed from 4; killed mid-phase, right after step 7's loss was logged (steps 5-7 lost again)
    log, tmp = killed(train_in_child, out, report, {"at": "log", "step": 7})
    assert "[train] resuming from step 4" in log, log
    assert tmp is None and resume_step(out) == 4 and not (out / "train.pt").exists()
    assert leftovers(out) == [orphan]  # only the next write of the resume state removes it

    # 3. resumed from 4 (step 8's write removes the orphan); killed inside the phase checkpoint's write
    log, orphan = killed(train_in_child, out, report, {"at": "replace", "target": "train.pt", "nth": 1})
    assert "[train] resuming from step 4" in log, log
    assert orphan is not None and orphan.parent == out and orphan.name.startswith(".train.pt."), (orphan, log)
    assert load_checkpoint(orphan)["step"] == STEPS
    assert resume_step(out) == 8 and not (out / "train.pt").exists() and leftovers(out) == [orphan]

    # 4. resumed from 8; killed right after train.pt was renamed into place, before its resume state is removed
    log, tmp = killed(train_in_child, out, report, {"at": "replace", "target": "train.pt", "nth": 1, "after": True})
    assert "[train] resuming from step 8" in log, log
    assert tmp is None and (out / "train.pt").is_file() and resume_step(out) == 8 and not leftovers(out)

    # 5. the phase is reused as finished; killed inside model.pt's write
    log, orphan = killed(train_in_child, out, report, {"at": "replace", "target": "model.pt", "nth": 1})
    assert "[train] already finished" in log, log
    assert orphan is not None and orphan.parent == out and orphan.name.startswith(".model.pt."), (orphan, log)
    assert leftovers(out) == [orphan]

    # 6. the finished phase is reused again (its curves replayed from train.pt); the run completes
    rc, log = train_in_child(out, report)
    assert rc == 0, log
    assert "[train] already finished" in log, log
    assert_matches_reference(reference, out, report)
