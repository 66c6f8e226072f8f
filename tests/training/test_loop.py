"""A training step never waits for the device: inside loss, backward, optimiser update and the groups'
simplex projection no tensor is read back to the host (`.item()`, `bool(t)`, `.tolist()`), and nothing has a
data-dependent size (`nonzero`, boolean-mask indexing, `unique`, `masked_select`). Checked by intercepting
every torch call of the step with a TorchFunctionMode (on a GPU each of these would be a synchronisation)."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from scaleprotoseg.config import load_config
from scaleprotoseg.losses import present_classes
from scaleprotoseg.models.build import build_for
from scaleprotoseg.training.loop import LossStep, make_optimizer
from scaleprotoseg.training.phases import loss_for, phase_spec

SYNCING = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero,
           torch.Tensor.unique, torch.unique, torch.masked_select, torch.Tensor.masked_select, torch.Tensor.numpy,
           torch.Tensor.__int__, torch.Tensor.__float__, torch.argwhere}


class NoHostSync(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING and not _optimizer_step_counter(func):
            self.calls.append(f"{getattr(func, '__name__', func)} at {_caller()}")
        if func is torch.Tensor.__getitem__ and _bool_index(args[1]):
            self.calls.append(f"boolean-mask indexing at {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """The first frame outside this file and torch's own Python code."""
    for frame in traceback.extract_stack()[::-1]:
        if frame.filename != __file__ and "/torch/" not in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}"
    return "?"


def _optimizer_step_counter(func) -> bool:
    """Adam reads its step count with `.item()`: a CPU tensor by design (on a GPU too, unless `capturable`)."""
    if func is not torch.Tensor.item:
        return False
    return any("/torch/optim/" in f.filename for f in traceback.extract_stack()[-4:])


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


OVER = {"presets.embedded.model.width": 8, "experiment.device": "cpu", "presets.embedded.model.msc_scales": [0.75],
        "presets.embedded.scaleprotoseg.features": 8, "presets.embedded.protoseg.features": 8}


@pytest.mark.parametrize("method,phase", [("deeplab", "train"), ("protoseg", "joint"), ("scaleprotoseg", "warmup"),
                                          ("scaleprotoseg", "joint"), ("scaleprotoseg", "finetune"),
                                          ("scaleprotoseg_groups", "group_joint")])
def test_a_training_step_never_reads_the_device(params, method, phase):
    cfg = load_config(params, method=method, overrides=OVER)
    torch.manual_seed(0)
    model = build_for(cfg, 5, offline=True)
    if method == "scaleprotoseg_groups":
        model.add_groups(cfg.train.groups)
    spec = phase_spec(model, phase, cfg)
    opt = make_optimizer(spec.optimizer, spec.groups, momentum=spec.momentum)
    step = LossStep(model.train(), loss_for(cfg.train, phase))
    x = torch.randn(2, 3, 40, 40)
    y = torch.randint(0, 5, (2, 40, 40), dtype=torch.uint8)
    y[:, :3] = 255
    classes = present_classes(y, 5)  # the loader's work, on the host
    labels = y.long()
    project = model.group_head.project if method == "scaleprotoseg_groups" else None
    for _ in range(2):  # the first step builds per-model caches (prototype tables), the second is the steady state
        with NoHostSync() as mode:
            loss = step(x, labels, classes)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if project is not None:
                project()
    assert mode.calls == [], f"{method}/{phase}: host synchronisations in the step: {mode.calls}"


def test_the_detector_sees_a_sync():
    with NoHostSync() as mode:
        t = torch.tensor([1.0, -1.0])
        if (t > 0).any():
            _ = t[t > 0]
    assert any(c.startswith("__bool__") for c in mode.calls)
    assert any(c.startswith("boolean-mask indexing") for c in mode.calls)
