import numpy as np
import pytest
import torch

from scaleprotoseg.data.prepared import VOID
from scaleprotoseg.data.transforms import downsample_labels, eval_input_size, train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _coded_pair(h=37, w=53):
    """An image whose red channel encodes the label, so alignment is checkable after any transform."""
    rng = np.random.default_rng(1)
    label = rng.integers(0, 4, (h, w)).astype(np.uint8)
    label = np.kron(label[: h // 4 + 1, : w // 4 + 1], np.ones((4, 4), np.uint8))[:h, :w]  # blocky, survives resizing
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 40 + 50 * label
    return image, label


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    image, label = _coded_pair()
    x, y = train_transform(image, label, np.random.default_rng(seed), 48, (0.5, 1.5), True, MEAN, STD)
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.uint8  # bytes on the host; int64 on the device
    red = (x[0] * STD[0] + MEAN[0]) * 255
    valid = y != VOID
    decoded = torch.round((red - 40) / 50)
    # interior pixels (away from block edges, where bilinear mixes neighbours) decode to their label
    interior = valid.clone()
    for d in (-1, 1):
        interior &= (torch.roll(y, d, 0) == y) & (torch.roll(y, d, 1) == y)
    assert interior.sum() > 50
    assert torch.equal(decoded[interior], y[interior].float())


def test_padding_is_void_and_mean_coloured():
    image, label = _coded_pair(20, 20)
    x, y = train_transform(image, label, np.random.default_rng(0), 40, (1.0, 1.0), False, MEAN, STD)
    assert (y[20:, :] == VOID).all() and (y[:, 20:] == VOID).all()
    assert torch.allclose(x[:, 30:, 30:], torch.zeros(()), atol=0.02)  # mean colour normalises to ~0


def test_flip_flips_both():
    image, label = _coded_pair(32, 32)
    flips = 0
    for seed in range(10):
        x, y = train_transform(image, label, np.random.default_rng(seed), 32, (1.0, 1.0), True, MEAN, STD)
        flipped = torch.equal(y, torch.from_numpy(label[:, ::-1].copy()).long())
        assert flipped or torch.equal(y, torch.from_numpy(label).long())
        flips += flipped
    assert 0 < flips < 10


def test_nearest_downsample_picks_pixel_centres():
    labels = torch.arange(64).reshape(1, 8, 8)
    small = downsample_labels(labels, (4, 4))
    # PIL NEAREST samples the centre of each 2×2 cell: source index floor((i + 0.5) * 2) = 2i + 1
    expected = labels[:, 1::2, 1::2]
    assert torch.equal(small, expected)


def test_eval_input_size():
    assert eval_input_size(375, 500, (513, 513), None) == (513, 513)
    assert eval_input_size(375, 500, None, 512) == (512, 683)
    assert eval_input_size(375, 500, None, None) == (375, 500)


def test_downsample_labels_is_identity_at_feature_resolution():
    lab = torch.randint(0, 4, (2, 5, 6))
    assert torch.equal(downsample_labels(lab, (5, 6)), lab)
