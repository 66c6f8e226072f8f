"""Pascal parameter counts of the built models (ResNet-101, built once per module, no weights)."""

from __future__ import annotations

import pytest
import torch

from scaleprotoseg.config import ModelConfig
from scaleprotoseg.models.build import build_model
from scaleprotoseg.models.prototypes import (
    GroupHead,
    PrototypeLayer,
)

PASCAL_RATES = (6, 12, 18, 24)


ASPP_PARAMS = 4 * (2048 * 64 * 9 + 64)


def pascal_cfg():
    return ModelConfig(backbone="resnet101", width=32, pretrained=False, pretrained_path=None,
                       aspp_rates=PASCAL_RATES, freeze_bn=True, msc_scales=(0.5, 0.75))


@pytest.fixture(scope="module")
def pascal_scaleprotoseg():
    torch.manual_seed(0)
    return build_model("scaleprotoseg", pascal_cfg(), 21, prototypes=3, features=64).eval()


@pytest.fixture(scope="module")
def pascal_protoseg():
    torch.manual_seed(0)
    return build_model("protoseg", pascal_cfg(), 21, prototypes=10, features=64).eval()


def numel(params):
    return sum(p.numel() for p in params)


def test_pascal_scaleprotoseg_counts(pascal_scaleprotoseg):
    m = pascal_scaleprotoseg
    assert ASPP_PARAMS == 4_718_848
    assert tuple(m.prototypes.vectors.shape) == (252, 64)
    assert m.prototypes.vectors.numel() == 16_128
    assert numel(m.aspp.parameters()) == 4_718_848
    assert m.aspp.out_channels == 256
    assert tuple(m.last_layer.shape) == (21, 252) and m.last_layer.numel() == 5_292
    assert torch.bincount(m.prototypes.proto_class, minlength=21).tolist() == [12] * 21
    assert torch.bincount(m.prototypes.proto_scale).tolist() == [63] * 4


def test_pascal_trunk_matches_torchvision_resnet101_count(pascal_scaleprotoseg):
    import torchvision

    with torch.device("meta"):  # shapes only: no weight initialisation
        tv = torchvision.models.resnet101(weights=None)
    want = numel(tv.parameters()) - numel(tv.fc.parameters())
    got = numel(pascal_scaleprotoseg.backbone.parameters())
    assert got == want
    assert 42.4e6 < got < 42.6e6


def test_pascal_group_head_counts():
    """Built on a bare prototype layer's tables (a group head does not depend on the trunk)."""
    layer = PrototypeLayer(21, 3, 4, 64)
    gh = GroupHead(layer.proto_class, 21, 3)
    assert int(gh.valid_weights().sum()) == 756 == 21 * 3 * 12
    assert gh.weight.numel() == 756
    assert tuple(gh.head.shape) == (21, 63) and gh.head.numel() == 1_323
    # Class c's 12 columns are {63 s + 3 c + m}, s = 0..3, m = 0..2 (method.md §2.5).
    for c in range(21):
        assert gh.index[c].tolist() == sorted(63 * s + 3 * c + m for s in range(4) for m in range(3))


def test_pascal_add_groups_on_model(pascal_scaleprotoseg):
    m = pascal_scaleprotoseg
    try:
        gh = m.add_groups(3)
        assert int(gh.valid_weights().sum()) == 756
        assert gh.head.numel() == 1_323
        groups = m.param_groups()
        assert numel(groups["group_weights"]) == 756 and numel(groups["group_head"]) == 1_323
    finally:
        m.group_head = None


def test_pascal_protoseg_counts(pascal_protoseg):
    m = pascal_protoseg
    assert tuple(m.prototypes.vectors.shape) == (210, 64)
    assert numel(m.aspp.parameters()) == 4_718_848
    assert m.aspp.out_channels == 64
    assert tuple(m.last_layer.shape) == (21, 210)
    assert m.prototypes.proto_scale.tolist() == [0] * 210
    assert m.prototypes.proto_class.tolist() == [p // 10 for p in range(210)]


@pytest.mark.slow  # a ResNet-101 forward at 321 px
def test_pascal_eval_output_shape(pascal_scaleprotoseg):
    """One ResNet-101 forward on CPU; MSC is switched off here to keep it cheap (MSC's eval fusion keeps the
    full-scale shape, checked on the small backbone below)."""
    m = pascal_scaleprotoseg
    assert m.group_head is None and not m.training
    msc, m.msc_scales = m.msc_scales, ()
    try:
        with torch.no_grad():
            out = m(torch.zeros(1, 3, 321, 321))
    finally:
        m.msc_scales = msc
    assert isinstance(out, dict)
    assert tuple(out["logits"].shape) == (1, 21, 41, 41)
    assert tuple(out["distances"].shape) == (1, 252, 41, 41)
    assert tuple(out["similarities"].shape) == (1, 252, 41, 41)
