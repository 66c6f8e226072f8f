"""The paper-schedule cost estimate: FLOP counted on `meta` against a naive per-layer count, phase ordering,
and the measured mode on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaleprotoseg.config import load_config, set_key
from scaleprotoseg.tools import cost

from ..layouts import tiny_overrides


def _cfg(params, method):
    for k, v in tiny_overrides("pascal", methods=(method,)).items():
        set_key(params, k, v)
    return load_config(params, dataset="pascal", method=method)


def _naive_forward_flop(model, size) -> float:
    """2 × Σ over conv layers of k_h·k_w·C_in/groups·C_out·H_out·W_out (+ linear layers), from hooks on a real
    CPU forward."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += 2 * kh * kw * mod.in_channels // mod.groups * out.numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for h in hs:
        h.remove()
    return total / 1e12


def test_counted_forward_flop_of_deeplab_matches_a_per_layer_count(params):
    cfg = _cfg(params, "deeplab")
    counted = cost.count_tflop(cost._model(cfg, 21), cfg, None, 1, (48, 64), train=False)
    naive = _naive_forward_flop(cost._model(cfg, 21), (48, 64))
    assert counted > 0 and abs(counted - naive) / naive < 0.02


def test_phases_cost_what_they_train(params):
    cfg = _cfg(params, "scaleprotoseg")
    m = lambda: cost._model(cfg, 21)
    fwd = cost.count_tflop(m(), cfg, None, 2, (32, 32), train=False)
    warm = cost.count_tflop(m(), cfg, "warmup", 2, (32, 32))
    joint = cost.count_tflop(m(), cfg, "joint", 2, (32, 32))
    fine = cost.count_tflop(m(), cfg, "finetune", 2, (32, 32))
    # joint back-propagates through the trunk (about 3 forward passes); warm-up only through the head;
    # fine-tuning only into the last layer
    assert 2.5 * fwd < joint < 3.5 * fwd
    assert fine < warm < joint and fine < 1.2 * fwd


@pytest.mark.slow  # measures each preset
def test_estimate_table_and_measured_mode(params):
    for m in ("scaleprotoseg",):
        _cfg(params, m)
    rows, passes = cost.estimate(params, datasets=("pascal",), methods=("scaleprotoseg",), measure=1)
    assert [r.phase for r in rows] == ["warmup", "joint", "finetune"]
    assert all(r.seconds_per_micro_batch > 0 for r in rows)
    text = cost.report(rows, passes, tflops=25.0)
    assert "| pascal | scaleprotoseg | 4 |" in text  # 1 + 2 + 1 micro-batches of the tiny schedule


def test_validations_follow_run_phase():
    # every val_every mini-batches while below the phase's steps, and once at the end
    assert cost.validations(10, 5) == 2 and cost.validations(11, 5) == 3 and cost.validations(4, 5) == 1
    assert cost.validations(10, 0) == 1 and cost.validations(0, 5) == 0


def test_validation_passes_of_the_pascal_preset(params):
    cfg = load_config(params, dataset="pascal", method="scaleprotoseg")
    t, rt = cfg.train, cfg.runtime
    assert (t.warmup_steps, t.joint_steps, rt.val_every, rt.val_images) == (15000, 150000, 5000, 300)
    # warm-up: at 5k and 10k plus the end = 3; joint: at 5k, ..., 145k plus the end = 30; fine-tuning
    # (project stage) never validates; 300 of Pascal's 1,449 val images each time
    assert cost.validation_passes(cfg, "pascal") == (33, 300)
    cfg0 = load_config(params, dataset="pascal", method="deeplab", overrides={"presets.pascal.runtime.val_images": 0})
    assert cost.validation_passes(cfg0, "pascal") == (20, 1449)  # 0: the whole split
