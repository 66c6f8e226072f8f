import numpy as np
import pytest
from PIL import Image

from scaleprotoseg.data.loader import StepBatchSampler, eval_loader, train_loader
from scaleprotoseg.data.prepared import PreparedDataset, read_meta
from scaleprotoseg.errors import ConfigError, DataError

from ..conftest import CLASSES, tiny_samples


def test_round_trip(tiny_dataset):
    ds = PreparedDataset(tiny_dataset, "train")
    sid, img, lab, parts = next(tiny_samples(1))
    assert ds.ids[0] == sid
    assert np.array_equal(ds.image(0), img) and np.array_equal(ds.label(0), lab) and np.array_equal(ds.parts(0), parts)
    assert read_meta(tiny_dataset).classes == CLASSES


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="No prepared dataset at .*meta.json is missing"):
        PreparedDataset(tmp_path / "nowhere", "train")


def test_unknown_split(tiny_dataset):
    with pytest.raises(DataError, match="no split 'test'"):
        PreparedDataset(tiny_dataset, "test")


def test_corrupt_image_names_the_file(tiny_dataset):
    (tiny_dataset / "images" / "img001.png").write_bytes(b"not a png at all")
    ds = PreparedDataset(tiny_dataset, "train")
    with pytest.raises(DataError, match=r"img001\.png is not a readable image"):
        ds.image(1)


def test_label_out_of_range_names_the_file(tiny_dataset):
    lab = np.zeros((40, 40), np.uint8)
    lab[3, 3] = 7
    Image.fromarray(lab).save(tiny_dataset / "labels" / "img002.png")
    ds = PreparedDataset(tiny_dataset, "train")
    with pytest.raises(DataError, match=r"img002\.png: label values \[7\] are outside 0..2"):
        ds.label(2)


def test_void_is_kept_not_a_class(tiny_dataset):
    lab = PreparedDataset(tiny_dataset, "train").label(0)
    assert 255 in lab and set(np.unique(lab)) <= {0, 1, 2, 255}


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
    from dataclasses import replace

    data = replace(tiny_cfg.data, crop=200)
    with pytest.raises(ConfigError, match=r"data.crop \(200\) is larger than images allow"):
        train_loader(tiny_dataset, "train", data, 2, 3, seed=1)


def test_eval_loader_whole_images(tiny_dataset, tiny_cfg):
    x, y, idx = next(iter(eval_loader(tiny_dataset, "val", tiny_cfg.data, 2)))
    assert x.shape == (2, 3, 40, 40) and y.shape == (2, 40, 40) and idx.tolist() == [0, 1]
