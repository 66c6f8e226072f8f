"""Inputs that used to give a silently wrong result or a raw traceback: each now gives the right data or one
clear message naming the file or key."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from scaleprotoseg.data.class_names import folder_classes_file
from scaleprotoseg.data.readers import read_image, read_index_png
from scaleprotoseg.data.sources import _read_list
from scaleprotoseg.errors import DataError


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    src = rng.integers(20000, 46000, (40, 50), dtype=np.uint16)  # mean ≈ 33,000 / 65,535
    path = tmp_path / "em.png"
    Image.fromarray(src).save(path)
    assert Image.open(path).mode.startswith("I")  # stored as 16 bits
    img = read_image(path)
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8
    naive = np.array([[round(int(v) * 255 / 65535) for v in row] for row in src])  # the scaling, pixel by pixel
    assert np.array_equal(img[..., 0], naive) and np.array_equal(img[..., 2], naive)
    assert abs(img.mean() - src.mean() * 255 / 65535) < 0.5  # not ~255 (clipped)


def test_an_8_bit_image_is_unchanged(tmp_path):
    src = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(src).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), src)


def test_a_mask_above_the_pixel_limit_is_refused_like_an_image(tmp_path, monkeypatch):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"mask\.png is larger than the decompression limit of 1,000 pixels.*max_image_pixels"):
        read_index_png(path)


def test_a_split_list_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("img_001\nimg_\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"train\.txt is not UTF-8 text \(byte 0xe9"):
        _read_list(path)
    path.write_bytes("\ufeffimg_001\n".encode("utf-8"))  # a byte-order mark is fine
    assert _read_list(path) == ["img_001"]


def test_a_classes_json_that_is_not_utf8_names_the_file(tmp_path):
    (tmp_path / "classes.json").write_bytes('{"names": ["fond", "b\xe2timent"]}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"classes\.json is not UTF-8 text"):
        folder_classes_file(tmp_path)


def test_a_floating_point_image_names_the_file(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(DataError, match=r"f\.tif: a floating-point image"):
        read_image(path)


def _module(children=None, tensors=None):
    from scaleprotoseg.released.unpickle import standin

    cls = standin("torch.nn.modules.container", "Sequential")
    m = cls()
    m.__setstate__({"_modules": dict(children or {}), "_parameters": dict(tensors or {}), "_buffers": {}})
    return m


def test_a_released_module_tree_with_a_cycle_or_absurd_depth_is_malformed_not_a_recursion_error():
    import torch

    from scaleprotoseg.errors import ArtifactError
    from scaleprotoseg.released.unpickle import modules_of, tensors_of

    leaf = _module(tensors={"weight": torch.zeros(2)})
    shared = _module({"a": leaf, "b": leaf})  # one module under two names (tied weights) is fine
    assert set(tensors_of(_module({"x": shared}))) == {"x.a.weight", "x.b.weight"}
    assert list(modules_of(_module({"x": shared}))) == ["", "x", "x.a", "x.b"]

    cyclic = _module()
    cyclic.attrs["_modules"]["self"] = _module({"back": cyclic})
    with pytest.raises(ArtifactError, match="contains itself"):
        tensors_of(cyclic)
    deep = leaf
    for _ in range(100_000):  # the depth a hostile file can reach cheaply
        deep = _module({"m": deep})
    with pytest.raises(ArtifactError, match="deeper than"):
        modules_of(deep)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask):
    import os
    import stat

    from scaleprotoseg.atomic import atomic_dir, atomic_path, write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.png") as tmp:
            Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp, format="png")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f.txt").write_text("x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.png", "d/f.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask


def test_a_full_disk_is_one_clear_message_naming_the_file_and_the_old_file_stays(tmp_path):
    import errno

    from scaleprotoseg.atomic import atomic_path, write_json
    from scaleprotoseg.errors import ArtifactError

    target = tmp_path / "summary.json"
    write_json(target, {"old": True})
    with pytest.raises(ArtifactError, match=r"could not write .*summary\.json: disk full.*unchanged"):
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(ArtifactError, match=r"samples\.png: disk full"):  # Pillow's way: another error while handling ENOSPC
        with atomic_path(tmp_path / "samples.png"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise AttributeError("'_idat' object has no attribute 'fileno'")
    assert target.read_text().strip().startswith('{\n  "old": true')
    with pytest.raises(ValueError, match="other"):  # any other error passes through unchanged
        with atomic_path(tmp_path / "c.json"):
            raise ValueError("other")


def test_explain_refuses_bad_outputs_and_sizes_before_any_work(tmp_path, capsys):
    from scaleprotoseg.explain.__main__ import main

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("x")
    cases = [(["--out", str(not_a_folder)], r"--out .*out\.txt is a file, not a folder"),
             (["--out", "/proc/scaleprotoseg-test"], r"--out /proc/scaleprotoseg-test cannot be written to"),
             (["--out", str(tmp_path / "o"), "--size", "100000"], r"--size 100000 is too large.*at most 2048")]
    for extra, message in cases:  # the checkpoint does not even exist: these are refused first
        rc = main(["--checkpoint", str(tmp_path / "missing.pt"), "--image", str(image), *extra])
        err = capsys.readouterr().err
        assert rc == 1 and re.search(message, err) and "Traceback" not in err, err
    assert not_a_folder.read_text() == "x"


def test_explain_refuses_an_image_above_the_pixel_limit_by_name(tmp_path, monkeypatch):
    from scaleprotoseg.explain.image import read_image as explain_read_image

    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2× its limit
    with pytest.raises(DataError, match=r"huge\.png has more pixels than the decompression limit"):
        explain_read_image(path)


def test_the_prepare_notebook_shows_the_settings_of_the_dataset_it_prepares(params):
    from scaleprotoseg.stages.prepare import source_settings

    assert source_settings(params, "embedded").image_size == params["embedded"]["image_size"]
    folder = source_settings(params, "folder")
    assert folder.root == params["data_sources"]["folder"]["root"] and not hasattr(folder, "image_size")
