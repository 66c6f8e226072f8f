"""Small raw datasets written in each dataset's real on-disk layout (what users download), for the tests.

Every image holds a few rectangles whose colour gives their class, so a model can learn something in a few
steps; labels use each dataset's own value space (VOC ids + 255, Cityscapes labelIds, ADE 0 = other, …)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from scaleprotoseg.stages.smoke import shrink

# Pascal-Panoptic-Parts' spec, shortened: VOC's 20 classes in VOC order, a few with parts, one context class.
PPP_SPEC = """\
version: 2.0
name: Pascal Panoptic Parts
scene_class2part_classes: {
  aeroplane: [body, engine, wheel], bicycle: [], bird: [], boat: [], bottle: [], bus: [],
  car: [body, wheel, light], cat: [], chair: [], cow: [], table: [], dog: [], horse: [], motorbike: [],
  person: [torso, head], pottedplant: [], sheep: [], sofa: [], train: [], tvmonitor: [], wall: []
}
countable_pids_groupings: {
  aeroplane: {engine: [2, 3, 4, 5], wheel: [6, 7, 8]},
  car: {wheel: [20, 21, 22, 23]}
}
"""


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def scene(seed: int, h: int, w: int, values: tuple[int, int, int]):
    """(RGB image, label with values[0] background, values[1] box, values[2] stripe, box slice)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
    lab = np.full((h, w), values[0], np.uint8)
    y, x = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
    s = int(rng.integers(8, min(h, w) // 2))
    box = (slice(y, y + s), slice(x, x + s))
    img[box] = (230, 40, 40)
    lab[box] = values[1]
    c = int(rng.integers(0, w - 5))
    img[:, c : c + 5] = (20, 20, 200)
    lab[:, c : c + 5] = values[2]
    return img, lab, box


def write_pascal(root: Path, n: int = 6, h: int = 40, w: int = 48, parts: bool = True) -> Path:
    """VOC2012: JPEGImages, SegmentationClass (palette PNGs), ImageSets/Segmentation lists; optionally
    Pascal-Panoptic-Parts uid TIFFs for the val images and parts.yaml."""
    from scaleprotoseg.data.sources import voc_palette

    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, sid in enumerate(ids):
        img, lab, box = scene(i, h, w, (0, 1, 15))  # background, aeroplane, person
        lab[0, :] = 255  # VOC's void border
        _save(root / "JPEGImages" / f"{sid}.jpg", img)
        pal = Image.fromarray(lab, mode="P")
        pal.putpalette(voc_palette().tolist())
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        pal.save(root / "SegmentationClass" / f"{sid}.png")
        if parts and i >= n - 2:
            uids = np.where(lab == 1, 100101, 0).astype(np.int32)  # aeroplane body
            top = box[0].start
            uids[top : top + 3, box[1]] = 100103  # an engine (folded into part 2)
            uids[lab == 15] = np.int32(1500101)
            _save(root / "labels" / "validation" / f"{sid}.tif", uids, mode="I")
    if parts:
        (root / "parts.yaml").write_text(PPP_SPEC)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(ids[:-2]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[-2:]) + "\n")
    return root


def write_cityscapes(root: Path, n: int = 6, h: int = 32, w: int = 64, parts: bool = True) -> Path:
    """leftImg8bit / gtFine labelIds per city, gtFinePanopticParts uids for the val images."""
    for i in range(n):
        split = "val" if i >= n - 2 else "train"
        city = "ulm" if split == "train" else "lindau"
        stem = f"{city}_{i:06d}_000019"
        img, lab, box = scene(i, h, w, (7, 26, 11))  # road, car, building
        lab[-2:, :] = 1  # ego vehicle → void
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
        if parts and split == "val":
            uids = lab.astype(np.int32)
            uids[lab == 26] = 2600105  # car chassis
            top = box[0].start
            uids[top : top + 3, box[1]] = 2600101  # windows
            _save(root / "gtFinePanopticParts" / split / city / f"{stem}_gtFinePanopticParts.tif", uids, mode="I")
    return root


def write_ade20k(root: Path, n: int = 6, h: int = 40, w: int = 48) -> Path:
    base = root / "ADEChallengeData2016"
    for i in range(n):
        folder, sid = ("validation", f"ADE_val_{i:08d}") if i >= n - 2 else ("training", f"ADE_train_{i:08d}")
        img, lab, _ = scene(i, h, w, (1, 13, 3))  # wall, person, sky
        lab[:2, :2] = 0  # 'other' → void
        _save(base / "images" / folder / f"{sid}.jpg", img)
        _save(base / "annotations" / folder / f"{sid}.png", lab)
    return root


def write_coco_stuff(root: Path, n: int = 6, h: int = 40, w: int = 48) -> Path:
    for i in range(n):
        split = "val2017" if i >= n - 2 else "train2017"
        img, lab, _ = scene(i, h, w, (156, 0, 181))  # sky-other, person, wood
        lab[:2, :] = 255
        _save(root / "images" / split / f"{i:012d}.jpg", img)
        _save(root / "stuffthingmaps_trainval2017" / split / f"{i:012d}.png", lab)
    return root


def write_em(root: Path, n: int = 30, size: int = 32) -> Path:
    """ISBI 2012: two multi-page TIFFs (volume, labels 0 membrane / 255 cell)."""
    root.mkdir(parents=True, exist_ok=True)
    vols, labs = [], []
    for i in range(n):
        img, lab, _ = scene(i, size, size, (255, 0, 0))
        vols.append(Image.fromarray(img[..., 0]))
        labs.append(Image.fromarray(lab))
    vols[0].save(root / "train-volume.tif", save_all=True, append_images=vols[1:])
    labs[0].save(root / "train-labels.tif", save_all=True, append_images=labs[1:])
    return root


def write_folder(root: Path, n: int = 8, h: int = 40, w: int = 48) -> Path:
    """Your own data: images/, masks/ with values 10/20/30 declared in classes.json, 99 = void."""
    for i in range(n):
        img, lab, _ = scene(i, h, w, (10, 20, 30))
        lab[:1, :] = 99
        _save(root / "images" / f"f{i}.png", img)
        _save(root / "masks" / f"f{i}.png", lab)
    (root / "classes.json").write_text(json.dumps({"names": ["ground", "box", "stripe"], "values": [10, 20, 30], "void": 99}))
    return root


WRITERS = {"pascal": write_pascal, "cityscapes": write_cityscapes, "ade20k": write_ade20k,
           "coco_stuff": write_coco_stuff, "em": write_em, "folder": write_folder}


tiny_overrides = shrink  # a paper preset shrunk to seconds on a CPU (stages/smoke.py)
