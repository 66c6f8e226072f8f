"""Odd class files, names and image files of a folder dataset (issue 26): what would corrupt the labels
silently is refused naming the file and the key; odd but legitimate names are kept and drawn literally."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from scaleprotoseg import plots
from scaleprotoseg.data import sources as src
from scaleprotoseg.data.convert import prepare_source
from scaleprotoseg.data.readers import read_image, read_index_png
from scaleprotoseg.errors import DataError


def folder(root, spec, n=3, h=6, w=9):
    """A folder dataset: images/ RGB, masks/ holding values 0 and 1 (left and right halves), classes.json."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2:] = 1
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{k}.png")
    (root / "classes.json").write_text(json.dumps(spec))
    return root


BAD = {
    "value listed twice": ({"names": ["a", "b"], "values": [1, 1]}, "`values` lists 1 twice"),
    "void is a class value": ({"names": ["a", "b"], "values": [0, 1], "void": 1}, "`void` is 1, the value of class 'b'"),
    "duplicate name": ({"names": ["cat", "cat"]}, "`names` lists 'cat' twice"),
    "empty name": ({"names": ["a", " "]}, "`names[1]` is ' '"),
    "number as name": ({"names": ["a", 2]}, "`names[1]` is 2"),
    "null name": ({"names": [None, "b"]}, "`names[0]` is None"),
    "value out of range": ({"names": ["a", "b"], "values": [0, 300]}, "`values[1]` is 300"),
    "bool value": ({"names": ["a", "b"], "values": [0, True]}, "`values[1]` is True"),
    "text void": ({"names": ["a", "b"], "void": "255"}, "`void` is '255'"),
    "values too short": ({"names": ["a", "b"], "values": [0]}, "`values` must list one mask value per name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_corrupting_classes_file_refused_naming_file_and_key(tmp_path, case):
    spec, expected = BAD[case]
    root = folder(tmp_path / "ds", spec)
    with pytest.raises(DataError) as err:
        src.scan_folder(root)
    assert str(root / "classes.json") in str(err.value) and expected in str(err.value)


def test_yaml_number_names_refused_with_quoting_hint(tmp_path):
    root = folder(tmp_path / "ds", {"names": ["x"]})
    (root / "classes.json").unlink()
    (root / "classes.yaml").write_text("names: [yes, 1]\n")
    with pytest.raises(DataError, match=r"classes\.yaml: `names\[0\]` is True.*quote it in YAML"):
        src.scan_folder(root)


ODD = ["a/b", "cost $5", "$\\frac{x$", "</script><script>window.__pwned=1</script>",
       "\"'><img src=x onerror=window.__pwned=1>"]


def test_odd_names_kept_literally_and_drawn(tmp_path):
    """'/', '$' and markup are legitimate in a name: prepared as written; every figure drawing class names
    saves without mathtext errors, and the gallery keeps a class containing '/' in one row."""
    names = ODD[:2]
    root = folder(tmp_path / "ds", {"names": names})
    meta, *_ = prepare_source(src.scan_folder(root), tmp_path / "out", progress=False)
    assert list(meta.classes) == names
    out = tmp_path / "figs"
    plots.save_figure(plots.confusion_figure(np.eye(len(ODD)) * 5, ODD), out / "confusion.png")
    lab = np.zeros((6, 9), np.uint8)
    lab[:, 3:] = 2
    plots.save_figure(plots.predictions_figure([np.zeros((6, 9, 3), np.uint8)], [lab], [lab], ODD, titles=["$x"]),
                      out / "pred.png")
    import pandas as pd

    plots.save_figure(plots.per_class_iou_figure(pd.DataFrame({"m": np.arange(len(ODD)) * 10.0}, index=ODD)), out / "iou.png")
    protos = [f"{c}/s{s}/0" for c in ODD[:3] for s in (0, 1)]
    boxes = np.tile([0, 4, 0, 4], (len(protos), 1))
    fig = plots.prototype_gallery(np.zeros((len(protos), 8, 8, 3), np.uint8), boxes, protos)
    row_labels = [t.get_text() for t in fig.findobj(plots.matplotlib.text.Text)]
    assert "a/b" in row_labels and "cost $5" in row_labels and "a" not in row_labels  # '/' did not split the class
    plots.save_figure(fig, out / "gallery.png")
    for png in ("confusion", "pred", "iou", "gallery"):
        assert (out / f"{png}.png").stat().st_size > 1000


def test_symlink_leaving_the_dataset_refused(tmp_path):
    root = folder(tmp_path / "ds", {"names": ["a", "b"]})
    outside = tmp_path / "elsewhere.png"
    (root / "images" / "im0.png").rename(outside)
    os.symlink(outside, root / "images" / "im0.png")
    with pytest.raises(DataError, match=r"images/im0\.png is a symbolic link to .*outside the dataset folder.*copy"):
        src.scan_folder(root)


def test_symlinks_inside_the_dataset_and_a_linked_root_are_followed(tmp_path):
    root = folder(tmp_path / "ds", {"names": ["a", "b"]})
    (root / "store").mkdir()
    (root / "images" / "im0.png").rename(root / "store" / "im0.png")
    os.symlink(root / "store" / "im0.png", root / "images" / "im0.png")
    os.symlink(root, tmp_path / "link")
    assert len(src.scan_folder(tmp_path / "link").files) == 3


def _exif_rotated(path, array, orientation=6):
    """Save `array` with an EXIF orientation tag (6: the viewer turns it 90° clockwise)."""
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def test_exif_orientation_applied_to_images_and_masks_consistently(tmp_path):
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = 255  # top-left as stored; orientation 6 shows it top-right
    _exif_rotated(tmp_path / "im.png", stored)
    shown = read_image(tmp_path / "im.png")
    assert shown.shape == (6, 4, 3) and shown[0, -1].tolist() == [255, 255, 255] and shown.sum() == 3 * 255
    mask = np.zeros((4, 6), np.uint8)
    mask[0, 0] = 1
    _exif_rotated(tmp_path / "mask.png", mask)
    lab = read_index_png(tmp_path / "mask.png")
    assert lab.shape == (6, 4) and lab[0, -1] == 1 and lab.sum() == 1
    from scaleprotoseg.explain.image import read_image as read_user_image

    assert np.array_equal(read_user_image(tmp_path / "im.png"), shown)


def test_exif_rotated_photo_with_unrotated_mask_refused_with_hint(tmp_path):
    """A mask drawn over the stored (sideways) pixels no longer fits the upright image: refused, saying why."""
    root = folder(tmp_path / "ds", {"names": ["a", "b"]}, h=6, w=9)
    _exif_rotated(root / "images" / "im0.png", np.zeros((6, 9, 3), np.uint8))
    source = src.scan_folder(root)
    with pytest.raises(DataError, match=r"masks/im0\.png: .*differ in size \(the image is read upright, its EXIF"):
        source.load("im0")
