"""The loaders: training batches as a pure function of the step, deterministic training crops, whole-image
evaluation; the seeded validation subset of training, and batches of equal-shape images whose confusion matrix
is the one image-by-image evaluation gives."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from scaleprotoseg.data.loader import StepBatchSampler, eval_loader, train_loader, val_subset
from scaleprotoseg.data.prepared import DatasetMeta, write_prepared
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.evaluation import evaluate
from scaleprotoseg.models.build import build_for

from ..conftest import CLASSES, tiny_samples

SIZES = [(40, 40), (32, 48), (40, 40), (48, 32), (40, 40), (32, 48), (40, 40), (40, 40), (48, 32)]


@pytest.fixture()
def mixed_dataset(tmp_path):
    """Nine val images of three sizes, interleaved."""
    samples = [(f"v{k}", img[:h, :w].copy(), lab[:h, :w].copy(), None)
               for k, ((h, w), (_, img, lab, _)) in enumerate(zip(SIZES, tiny_samples(len(SIZES), 48, seed=3)))]
    meta = DatasetMeta(name="mixed", classes=CLASSES, splits={"train": ("v0",), "val": tuple(s[0] for s in samples)})
    return write_prepared(tmp_path / "mixed", meta, samples)


def test_val_subset_is_seeded_sorted_and_without_replacement():
    a = val_subset(100, 10, seed=7)
    assert np.array_equal(a, val_subset(100, 10, seed=7)) and not np.array_equal(a, val_subset(100, 10, seed=8))
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0) and a.max() < 100
    assert a.tolist() != list(range(10))  # not the first images
    for size in (0, 100, 250):
        assert np.array_equal(val_subset(100, size, seed=7), np.arange(100))


def test_eval_loader_with_indices_yields_those_images(mixed_dataset, tiny_cfg):
    loader = eval_loader(mixed_dataset, "val", tiny_cfg.data, 1, indices=[1, 5, 6])
    assert len(loader.dataset) == 3
    assert [int(i) for _, _, idx in loader for i in idx] == [1, 5, 6]


@pytest.mark.parametrize("data", [{}, {"eval_size": (36, 36)}, {"eval_short_side": 24}])
@pytest.mark.slow  # evaluates a model per image and per batch
def test_eval_batches_group_equal_shapes_and_give_the_same_confusion(mixed_dataset, tiny_cfg, data):
    cfg = replace(tiny_cfg.data, **data)
    one = eval_loader(mixed_dataset, "val", cfg, 1)
    four = eval_loader(mixed_dataset, "val", cfg, 4)
    assert [int(i) for _, _, idx in one for i in idx] == list(range(len(SIZES)))  # batch 1: the split's order
    seen = []
    for x, y, idx in four:
        assert isinstance(x, torch.Tensor) and len(x) == len(y) == len(idx) <= 4  # stacked: one shape per batch
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(SIZES))) and len(four) < len(SIZES)
    assert [len(b) for b in four.batch_sampler] == [4, 2, 2, 1]  # 40×40 ×5, 32×48 ×2, 48×32 ×2
    torch.manual_seed(0)
    model = build_for(tiny_cfg, len(CLASSES), offline=True)
    a = evaluate(model, one, len(CLASSES), "cpu", keep=[3], progress=False)
    b = evaluate(model, four, len(CLASSES), "cpu", keep=[3], progress=False)
    assert a.confusion.sum() > 0 and np.array_equal(a.confusion, b.confusion)
    assert a.n_images == b.n_images == len(SIZES) and np.array_equal(a.examples[3], b.examples[3])


def test_step_batches_are_a_pure_function_of_the_step():
    a = StepBatchSampler(10, 3, steps=12, seed=5)
    b = StepBatchSampler(10, 3, steps=12, seed=5, start=7)
    full = list(a)
    assert list(b) == full[7:]
    assert full[0] != StepBatchSampler(10, 3, 12, seed=6).batch(0)
    # every image is drawn once per epoch (10 // 3 = 3 batches per epoch, 9 distinct images)
    assert len({i for batch in full[:3] for i, _ in batch}) == 9


def test_train_loader_is_deterministic(tiny_dataset, tiny_cfg):
    x1, y1, c1 = next(iter(train_loader(tiny_dataset, "train", tiny_cfg.data, 2, 3, seed=1)))
    x2, y2, c2 = next(iter(train_loader(tiny_dataset, "train", tiny_cfg.data, 2, 3, seed=1)))
    assert x1.shape == (2, 3, 32, 32) and (x1 == x2).all() and (y1 == y2).all() and (c1 == c2).all()


def test_crop_larger_than_images_allow(tiny_dataset, tiny_cfg):

    data = replace(tiny_cfg.data, crop=200)
    with pytest.raises(ConfigError, match=r"data.crop \(200\) is larger than images allow"):
        train_loader(tiny_dataset, "train", data, 2, 3, seed=1)


def test_eval_loader_whole_images(tiny_dataset, tiny_cfg):
    x, y, idx = next(iter(eval_loader(tiny_dataset, "val", tiny_cfg.data, 2)))
    assert x.shape == (2, 3, 40, 40) and y.shape == (2, 40, 40) and idx.tolist() == [0, 1]
