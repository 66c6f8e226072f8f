"""Backbone geometry, torchvision key mapping, BN freezing, failed weight download and ASPP counts."""

import pytest
import torch
import torchvision
from torch import nn

from scaleprotoseg.errors import ConfigError
from scaleprotoseg.models import (
    ASPP,
    DeepLabResNet101,
    SmallDilatedResNet,
    build_backbone,
    feature_size,
    freeze_batchnorm,
)
from scaleprotoseg.models import backbone as bb


def naive_size(n):
    """Output-stride-8 size written out step by step with floor/ceil from the conv formula."""
    import math

    n = math.floor((n + 2 * 3 - 7) / 2) + 1  # 7×7/2 pad 3
    n = math.ceil((n + 2 * 1 - 3) / 2) + 1  # max-pool 3/2 pad 1 ceil_mode
    return math.floor((n - 1) / 2) + 1  # 1×1/2


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return DeepLabResNet101().eval()


@pytest.mark.parametrize("size,expected", [(321, 41), (513, 65), (512, 65)])
@pytest.mark.slow  # ResNet-101 forwards up to 513 px
def test_resnet101_output_sizes(resnet, size, expected):
    with torch.no_grad():
        out = resnet(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 2048, expected, expected)


@pytest.mark.parametrize("n,expected", [(160, 21), (240, 31), (256, 33), (384, 49), (1024, 129), (2048, 257), (375, 48), (500, 63)])
def test_feature_size_formula(n, expected):
    assert feature_size(n) == expected == naive_size(n)


def test_resnet101_structure(resnet):
    stages = [len(getattr(resnet, f"layer{i}")) for i in (2, 3, 4, 5)]
    assert stages == [3, 4, 23, 3]
    b = resnet.layer3.block1
    assert b.reduce.conv.stride == (2, 2) and b.conv3x3.conv.stride == (1, 1)
    assert resnet.layer4.block5.conv3x3.conv.dilation == (2, 2)
    assert resnet.layer5.block2.conv3x3.conv.dilation == (4, 4)
    assert resnet.layer1.pool.ceil_mode
    assert resnet.layer2.block2.shortcut is None and resnet.layer2.block1.shortcut is not None
    assert all(m.bias is None for m in resnet.modules() if isinstance(m, nn.Conv2d))
    assert all(m.momentum == 0.001 and m.eps == 1e-5 for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))


def test_small_backbone_matches_geometry():
    m = SmallDilatedResNet(width=8).eval()
    with torch.no_grad():
        for n in (96, 128, 321):
            assert m(torch.zeros(1, 3, n, n)).shape == (1, 64, feature_size(n), feature_size(n))


@pytest.mark.slow  # torchvision's ResNet-101 built
def test_torchvision_weights_map_by_name_onto_every_trunk_tensor(resnet):
    tv = torchvision.models.resnet101(weights=None)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in tv.state_dict().items()}
    mapped = bb.map_torchvision_state_dict(state)
    assert "fc.weight" not in mapped and len(mapped) == len(state) - 2
    assert set(mapped) == set(resnet.state_dict())
    trunk = DeepLabResNet101()
    bb.load_torchvision_resnet101(trunk, state)
    sd = trunk.state_dict()
    assert torch.equal(sd["layer1.conv1.conv.weight"], state["conv1.weight"])
    assert torch.equal(sd["layer3.block1.reduce.conv.weight"], state["layer2.0.conv1.weight"])
    assert torch.equal(sd["layer4.block23.increase.bn.running_var"], state["layer3.22.bn3.running_var"])
    assert torch.equal(sd["layer5.block1.shortcut.bn.weight"], state["layer4.0.downsample.1.weight"])


def test_key_mapping_examples():
    f = bb.torchvision_to_deeplab_key
    assert f("bn1.running_mean") == "layer1.conv1.bn.running_mean"
    assert f("layer1.0.conv2.weight") == "layer2.block1.conv3x3.conv.weight"
    assert f("layer4.2.bn3.bias") == "layer5.block3.increase.bn.bias"
    assert f("layer2.0.downsample.0.weight") == "layer3.block1.shortcut.conv.weight"
    assert f("fc.weight") is None


def test_failed_download_names_the_parameter(monkeypatch):
    from torchvision.models import ResNet101_Weights

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet101_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone("resnet101", pretrained=True)


def test_missing_weights_file_names_the_parameter(tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained_path"):
        build_backbone("resnet101", pretrained_path=str(tmp_path / "nope.pth"))


@pytest.mark.slow  # a ResNet-101 saved and loaded
def test_local_weights_file_is_loaded(tmp_path):
    tv = torchvision.models.resnet101(weights=None)
    path = tmp_path / "r101.pth"
    torch.save(tv.state_dict(), path)
    trunk = build_backbone("resnet101", pretrained_path=str(path))
    assert torch.equal(trunk.state_dict()["layer2.block1.reduce.conv.weight"], tv.state_dict()["layer1.0.conv1.weight"])


def test_freeze_batchnorm_keeps_statistics_and_stops_gradients():
    m = SmallDilatedResNet(width=4)
    m.train()
    freeze_batchnorm(m)
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    out = m(torch.randn(2, 3, 48, 48) * 5 + 3)
    out.sum().backward()
    after = {k: v for k, v in m.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert not mod.training and mod.weight.grad is None and not mod.weight.requires_grad
        if isinstance(mod, nn.Conv2d):
            assert mod.weight.grad is not None


def test_aspp_parameter_count_and_modes():
    aspp = ASPP(2048, 64, (6, 12, 18, 24), mode="concat")
    assert sum(p.numel() for p in aspp.parameters()) == 4_718_848
    assert aspp.out_channels == 256
    x = torch.randn(1, 2048, 9, 9)
    with torch.no_grad():
        cat = aspp(x)
        aspp.mode = "sum"
        summed = aspp(x)
    assert cat.shape == (1, 256, 9, 9)
    naive = sum(cat[:, 64 * i : 64 * (i + 1)] for i in range(4))
    assert torch.allclose(summed, naive, atol=1e-6)
    w = torch.cat([b.weight.flatten() for b in aspp.branches])
    assert abs(w.std().item() - 0.01) < 5e-4 and all(torch.all(b.bias == 0) for b in aspp.branches)


def test_small_backbone_rejects_pretrained():
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone("small", pretrained=True)
