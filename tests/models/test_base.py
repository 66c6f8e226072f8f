"""Multi-scale (MSC) inputs and outputs of every model: the released resize grid, the fused eval output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scaleprotoseg.models.build import build_model

from ..naive import small_cfg


def test_msc_outputs_small_backbone():
    """Eval: one dict at full-scale resolution; training: full, 0.5, 0.75 and the fused max (method.md §2.3)."""
    torch.manual_seed(0)
    m = build_model("scaleprotoseg", small_cfg(msc_scales=(0.5, 0.75)), 3, prototypes=2, features=4)
    x = torch.rand(2, 3, 65, 65)
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert isinstance(out, dict) and tuple(out["logits"].shape) == (2, 3, 9, 9)
    m.train()
    outs = m(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert [tuple(o["logits"].shape[-2:]) for o in outs] == [(9, 9), (5, 5), (7, 7), (9, 9)]


def naive_released_resize(x: np.ndarray, p: float) -> np.ndarray:
    """The released MSC input resize written out pixel by pixel: bilinear, align_corners=False, driven by
    the scale factor p: output ⌊n·p⌋, source coordinate (i + 0.5)/p − 0.5 clamped at 0, step exactly 1/p."""
    C, H, W = x.shape
    oh, ow = int(np.floor(H * p)), int(np.floor(W * p))

    def taps(i, n):
        src = max((i + 0.5) / p - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        return i0, i1, src - i0

    out = np.zeros((C, oh, ow))
    for r in range(oh):
        r0, r1, a = taps(r, H)
        for c in range(ow):
            c0, c1, b = taps(c, W)
            out[:, r, c] = ((1 - a) * ((1 - b) * x[:, r0, c0] + b * x[:, r0, c1])
                            + a * ((1 - b) * x[:, r1, c0] + b * x[:, r1, c1]))
    return out


@pytest.mark.parametrize("size,p", [((9, 11), 0.5), ((9, 11), 0.75), ((13, 7), 0.75), ((21, 21), 0.5)])
def test_msc_input_resize_is_the_released_grid(size, p):
    """Every model's MSC branch sees the input on the released grid (step 1/p), which is not the grid of an
    explicit output size (step n/⌊n·p⌋)."""
    from scaleprotoseg.models.base import multi_scale

    torch.manual_seed(0)
    x = torch.rand(1, 2, *size, dtype=torch.float64)
    seen = []
    multi_scale(lambda t: seen.append(t) or t[:, :, :1, :1], x, (p,), training=True)
    ours = seen[1][0].numpy()
    want = naive_released_resize(x[0].numpy(), p)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)
    by_size = F.interpolate(x, size=want.shape[1:], mode="bilinear", align_corners=False)[0].numpy()
    assert np.abs(by_size - want).max() > 1e-3  # the grid matters: an explicit size samples other pixels


@pytest.mark.parametrize("method", ["deeplab", "protoseg", "scaleprotoseg"])
def test_msc_models_use_the_released_grid(method):
    """DeepLab and both prototype models feed the 0.5 / 0.75 branches with the released resize."""
    torch.manual_seed(0)
    kwargs = {} if method == "deeplab" else {"prototypes": 2, "features": 4}
    m = build_model(method, small_cfg(msc_scales=(0.5, 0.75)), 3, **kwargs).train()
    x = torch.rand(1, 3, 43, 43)
    seen = []
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    m(x)
    assert [tuple(t.shape[-2:]) for t in seen] == [(43, 43), (21, 21), (32, 32)]
    for t, p in zip(seen[1:], (0.5, 0.75)):
        np.testing.assert_allclose(t[0].numpy(), naive_released_resize(x[0].double().numpy(), p), atol=1e-5)
