"""The prepared dataset format: round trip, missing folders and splits, corrupt files named, void kept."""

import numpy as np
import pytest
from PIL import Image

from scaleprotoseg.data.prepared import PreparedDataset, read_meta
from scaleprotoseg.errors import DataError

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
