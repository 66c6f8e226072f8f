"""Mixed precision: the trunk and ASPP run in bf16 under autocast, the prototype head and every loss stay
float32, and a bf16 step's logits and losses stay close to the fp32 ones (CPU autocast)."""

from __future__ import annotations

import pytest
import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.device import autocast, resolve_precision
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.models.build import build_for
from scaleprotoseg.training.phases import deeplab_loss, group_loss, stage1_loss

OVER = {"presets.embedded.model.width": 8, "experiment.device": "cpu", "presets.embedded.model.msc_scales": [0.75],
        "presets.embedded.scaleprotoseg.features": 8, "presets.embedded.protoseg.features": 8}


def model_for(params, method):
    cfg = load_config(params, method=method, overrides=OVER)
    torch.manual_seed(0)
    model = build_for(cfg, 4, offline=True)
    if method == "scaleprotoseg_groups":
        model.add_groups(cfg.train.groups)
    return model.train(), cfg


def batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    y = torch.randint(0, 4, (2, 48, 48), generator=gen)
    y[:, :6] = 255
    return x, y


def loss_of(method, cfg):
    if method == "deeplab":
        return deeplab_loss
    return group_loss(cfg.train) if method == "scaleprotoseg_groups" else stage1_loss(cfg.train)


@pytest.mark.parametrize("method", ["protoseg", "scaleprotoseg", "scaleprotoseg_groups"])
def test_head_is_float32_under_bf16_autocast(params, method):
    model, cfg = model_for(params, method)
    x, _ = batch()
    seen = {}
    model.aspp.register_forward_hook(lambda m, i, o: seen.update(aspp=o.dtype))  # returns None: output kept
    with autocast(torch.device("cpu"), "bf16"):
        outs = model(x)
    assert seen["aspp"] == torch.bfloat16  # the features really ran in bf16
    for out in outs:
        for key in ("distances", "similarities", "logits"):
            assert out[key].dtype == torch.float32, key


@pytest.mark.parametrize("method", ["deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups"])
@pytest.mark.slow  # fp32 and bf16 steps of every method
def test_bf16_logits_and_loss_close_to_fp32(params, method):
    model, cfg = model_for(params, method)
    x, y = batch()
    fn = loss_of(method, cfg)
    with torch.no_grad():
        ref_loss = fn(model, x, y)
        ref = model.predict_logits(x) if method != "scaleprotoseg_groups" else None
        with autocast(torch.device("cpu"), "bf16"):
            half_loss = fn(model, x, y)
            half = model.predict_logits(x) if method != "scaleprotoseg_groups" else None
    assert half_loss.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per operation, not more
    assert abs(float(half_loss) - float(ref_loss)) <= 5e-3 * abs(float(ref_loss))  # measured ≤ 4e-4
    if ref is not None:
        assert half.dtype == (torch.bfloat16 if method == "deeplab" else torch.float32)  # DeepLab's head is ASPP
        err = (half.float() - ref).abs().max() / ref.abs().max()
        # measured: 0.005 (prototype heads: float32 from the sigmoid features on), 0.028 (DeepLab: bf16 logits)
        assert float(err) < (0.06 if method == "deeplab" else 0.01)
        assert not torch.equal(half.float(), ref)  # autocast really changed the arithmetic


def test_bf16_distances_do_not_cancel_near_a_prototype(params):
    """A feature equal to a prototype: float32 distance ~0 and similarity ~log(1/ε); bf16 arithmetic of
    ‖f‖² − 2f·p + ‖p‖² would lose it entirely (the reason the head is float32)."""
    model, _ = model_for(params, "scaleprotoseg")
    layer = model.prototypes
    S, D = layer.num_scales, layer.dim
    feats = torch.rand(1, S * D, 2, 2)
    p = 5
    s = int(layer.proto_scale[p])
    feats[0, s * D:(s + 1) * D, 0, 0] = layer.vectors.data[p]
    with autocast(torch.device("cpu"), "bf16"):
        d = layer.distances(feats.bfloat16()).detach()
    assert d.dtype == torch.float32
    assert float(d[0, p, 0, 0]) < 1e-3  # only the bf16 rounding of the input features remains
    sim = torch.log((d + 1) / (d + 1e-4))
    assert float(sim[0, p, 0, 0]) > 2.0  # log(1/ε) ≈ 9.2 at d = 0; bf16 cancellation (~1e-2) would give < 4.6


def test_precision_resolution_and_checks(params):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="experiment.precision"):
        load_config(params, method="deeplab", overrides={"experiment.precision": "fp8"})
