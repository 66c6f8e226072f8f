"""Several processes give the model of one process with the same global batch (DDP under torchrun, gloo on
the CPU): a DeepLab phase, ScaleProtoSeg's warm-up and joint phases with the diversity loss and MSC, the
group phases (simplex projection after each update), and projection with its fine-tuning.

Each run goes through the stage entry points exactly as `dvc repro` does: with `experiment.gpus: 2` the
stage starts itself under `torchrun` (two CPU processes) and waits."""

from __future__ import annotations

import shutil

import pytest
import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.data.loader import StepBatchSampler
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.losses import batch_mean, pixel_cross_entropy, sharded_batch
from scaleprotoseg.models.checkpoint import load_checkpoint
from scaleprotoseg.stages.project import project
from scaleprotoseg.stages.train import train

from ..conftest import TINY_OVERRIDES

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

COMMON = {
    **TINY_OVERRIDES,
    "presets.embedded.model.freeze_bn": True,  # BatchNorm statistics per process would differ (see method.md §11)
    "presets.embedded.model.msc_scales": [0.75],
    "presets.embedded.runtime.val_images": 2,
    "presets.embedded.runtime.checkpoint_every": 100,
}
STEPS = {
    "deeplab": {"deeplab.steps": 4, "deeplab.batch_size": 4, "deeplab.accumulation": 2},
    "scaleprotoseg": {"scaleprotoseg.warmup_steps": 2, "scaleprotoseg.joint_steps": 3, "scaleprotoseg.batch_size": 4,
                      "scaleprotoseg.features": 8, "scaleprotoseg.prototypes": 2,
                      "project_scaleprotoseg.finetune_steps": 2},
    "scaleprotoseg_groups": {"scaleprotoseg_groups.warmup_steps": 2, "scaleprotoseg_groups.joint_steps": 2,
                             "scaleprotoseg_groups.batch_size": 4},
}


def config(params, method, processes):
    over = {**COMMON, **{f"presets.embedded.{k}": v for m in STEPS.values() for k, v in m.items()},
            "experiment.gpus": processes}
    return load_config(params, method=method, overrides=over)


def assert_same_model(a, b, what):
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{what}: {k}: {m}")
        else:
            assert torch.equal(sa[k], sb[k]), f"{what}: {k}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("ddp")


def run_train(params, data, base, method, processes, start=None):
    cfg = config(params, method, processes)
    out = base / f"{method}-{processes}"
    summary = train(cfg, data, out / "train", out / "report", progress=False, start_checkpoint=start)
    assert summary["processes"] == processes
    assert not list((out / "train").glob("resume*.pt")) and not list(out.glob(".launch-*"))
    return out


@pytest.mark.parametrize("method", ["deeplab", "scaleprotoseg"])
@pytest.mark.slow  # torchrun
def test_two_processes_train_the_model_of_one(params, tiny_dataset, tmp_path, method):
    one = run_train(params, tiny_dataset, tmp_path, method, 1)
    two = run_train(params, tiny_dataset, tmp_path, method, 2)
    for phase in ("train",) if method == "deeplab" else ("warmup", "joint"):
        assert_same_model(one / "train" / f"{phase}.pt", two / "train" / f"{phase}.pt", f"{method} {phase}")
    # Only rank 0 logged: one DVCLive history, one row per step.
    curves = (two / "report" / "dvclive" / "plots" / "metrics")
    assert curves.is_dir()


@pytest.mark.slow  # torchrun
def test_projection_and_groups_with_two_processes(params, tiny_dataset, tmp_path):
    base = run_train(params, tiny_dataset, tmp_path, "scaleprotoseg", 1)
    outs = {}
    for n in (1, 2):
        cfg = config(params, "scaleprotoseg", n)
        outs[n] = tmp_path / f"project-{n}"
        info = project(cfg, tiny_dataset, base / "train", outs[n], progress=False)
        assert info["prototypes"] > 0
    a, b = (load_checkpoint(outs[n] / "projected.pt")["state_dict"] for n in (1, 2))
    torch.testing.assert_close(a["prototypes.vectors"], b["prototypes.vectors"], rtol=0, atol=0)  # same cells
    assert (outs[1] / "provenance.csv").read_text() == (outs[2] / "provenance.csv").read_text()
    assert_same_model(outs[1] / "model.pt", outs[2] / "model.pt", "projection + fine-tuning")
    # The groups start from the projected model; 2 processes = 1 process.
    one = run_train(params, tiny_dataset, tmp_path, "scaleprotoseg_groups", 1, start=outs[1] / "model.pt")
    two = run_train(params, tiny_dataset, tmp_path, "scaleprotoseg_groups", 2, start=outs[1] / "model.pt")
    for phase in ("group_warmup", "group_joint"):
        assert_same_model(one / "train" / f"{phase}.pt", two / "train" / f"{phase}.pt", phase)


def test_shards_cover_the_step_batch_in_order():
    whole = StepBatchSampler(10, 4, 3, seed=1)
    parts = [list(StepBatchSampler(10, 4, 3, seed=1, rank=r, world=2)) for r in range(2)]
    for s, batch in enumerate(whole):
        assert parts[0][s] + parts[1][s] == batch
    with pytest.raises(ConfigError, match="divisible"):
        StepBatchSampler(10, 3, 3, seed=1, world=2)


def test_global_batch_must_divide_among_processes(params):
    with pytest.raises(ConfigError, match=r"presets\.embedded\.deeplab\.batch_size \(3\).*divisible by 2"):
        load_config(params, method="deeplab", overrides={**TINY_OVERRIDES, "presets.embedded.deeplab.batch_size": 3,
                                                           "experiment.gpus": 2})


def test_unsharded_mean_is_unchanged():
    """Outside a distributed step the normaliser is the local count (no process group needed)."""
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    with sharded_batch(1):
        a = pixel_cross_entropy(logits, labels)
    keep = labels != 255
    want = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(a, want)
    assert float(batch_mean(torch.tensor(0.0), torch.tensor(0))) == 0.0


def test_the_launcher_command(params):
    from scaleprotoseg.stages.launch import torchrun_command

    cfg = load_config(params, method="deeplab", overrides={**TINY_OVERRIDES, "experiment.gpus": 4, "experiment.nodes": 2,
                                                             "presets.embedded.deeplab.batch_size": 8,
                                                             "experiment.rdzv_endpoint": "node0:29500"})
    cmd = torchrun_command(cfg, "train", "c.json", {"data": "d", "out": "o", "report": "r", "start-from": None}, False)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in cmd and "--nnodes=2" in cmd and "--rdzv_endpoint=node0:29500" in cmd
    assert "--standalone" not in cmd and "--start" not in cmd and cmd[-1] == "--no-progress"


def test_torchrun_is_on_the_path_or_importable():
    assert shutil.which("torchrun") or __import__("torch.distributed.run")


def test_train_stream_yields_byte_labels_and_classes_and_keeps_its_workers(tiny_dataset, tiny_cfg):
    from scaleprotoseg.data.loader import TrainStream

    stream = TrainStream(tiny_dataset, "train", tiny_cfg.data, 2, num_workers=1)
    first = list(stream(3, seed=5))
    workers = stream.loader._iterator._workers if stream.loader._iterator is not None else None
    images, labels, classes = first[0]
    assert labels.dtype == torch.uint8 and images.dtype == torch.float32
    for b in range(2):
        want = sorted({int(v) for v in labels[b].flatten() if int(v) < 3})
        assert [int(c) for c in classes[b] if c >= 0] == want
    second = list(stream(2, seed=6, start=1))  # the next phase: same workers, its own steps and seed
    assert len(second) == 1
    if workers is not None:
        assert stream.loader._iterator._workers is workers
    again = list(TrainStream(tiny_dataset, "train", tiny_cfg.data, 2)(2, seed=6))[1]
    assert all(torch.equal(a, b) for a, b in zip(second[0], again))  # a pure function of (seed, step)
