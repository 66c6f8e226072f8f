"""Raw datasets written in each paper dataset's real download layout at its real image sizes, for the
rehearsal (`tools/rehearse.py`): the files a user unpacks under `data/<dataset>/`, with synthetic content.

Every image is a grid of tiles, each tile one class drawn in that class's own colour over noise; the classes
cycle over the tiles of the training images, so with enough tiles every class of the dataset appears (all
150 of ADE20K, all 182 of COCO-Stuff) and every prototype has cells to be projected on. Label values use each
dataset's own value space, and void appears where the real data has it (VOC's object borders, Cityscapes'
ego vehicle, ADE's 'other', COCO's unlabeled), so the readers' maps are exercised as on the real files.

| dataset | layout | image (H × W) |
|---|---|---|
| pascal | VOC2012 + SBD (`SegmentationClassAug`, `ImageSets/SegmentationAug`) + Pascal-Panoptic-Parts | 375 × 500 |
| cityscapes | `leftImg8bit`, `gtFine` labelIds, `gtFinePanopticParts` | 1024 × 2048 |
| ade20k | `ADEChallengeData2016/{images,annotations}`, `objectInfo150.txt` | 512 × 683 |
| coco_stuff | `images/{train,val}2017`, `stuffthingmaps_trainval2017`, `labels.txt` | 480 × 640 |
| em | ISBI 2012 `train-volume.tif` / `train-labels.tif` (multi-page) | 512 × 512 |
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.class_names import CITYSCAPES_LABELID_TO_TRAINID

SIZES = {"pascal": (375, 500), "cityscapes": (1024, 2048), "ade20k": (512, 683), "coco_stuff": (480, 640),
         "em": (512, 512)}
TILE = 64  # tile side (pixels) of the synthetic scenes

# Pascal-Panoptic-Parts' specification (parts.yaml), in the reader's format: VOC's 20 classes in VOC order,
# the part-annotated ones with parts; the countable fine parts folded as the real file folds them.
PPP_SPEC = """\
version: 2.0
name: Pascal Panoptic Parts
scene_class2part_classes: {
  aeroplane: [body, engine, wheel], bicycle: [wheel, body], bird: [torso, head, leg], boat: [], bottle: [body, cap],
  bus: [body, wheel, window], car: [body, wheel, light, window], cat: [torso, head, leg, tail], chair: [],
  cow: [torso, head, leg], table: [], dog: [torso, head, leg, tail], horse: [torso, head, leg, tail],
  motorbike: [wheel, body], person: [torso, head, arm, leg], pottedplant: [pot, plant], sheep: [torso, head, leg],
  sofa: [], train: [body, head], tvmonitor: [screen, frame]
}
countable_pids_groupings: {
  aeroplane: {engine: [2, 3, 4, 5], wheel: [6, 7, 8]},
  car: {wheel: [20, 21, 22, 23]}
}
"""
# Cityscapes-Panoptic-Parts: labelIds with parts and their part ids (human 1..4, vehicle 1..5).
CITYSCAPES_PART_IDS = {24: 4, 25: 4, 26: 5, 27: 5, 28: 5}


def tiles(size) -> int:
    """Tiles of one image of `size` (H, W)."""
    return max(size[0] // TILE, 1) * max(size[1] // TILE, 1)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours, one per class (seeded)."""
    return np.random.default_rng(1234).integers(20, 236, (n, 3), dtype=np.uint8)


def scene(index: int, h: int, w: int, values: np.ndarray, colours: np.ndarray, seed: int = 0):
    """(RGB image (h, w, 3), label (h, w) of `values`, tile grid of class indices): tile t of image `index`
    shows class (index · tiles + t) mod len(values), in its colour over seeded noise."""
    rows, cols = max(h // TILE, 1), max(w // TILE, 1)
    k = np.arange(rows * cols) + index * tiles((h, w))
    grid = (k % len(values)).reshape(rows, cols)
    ys = np.minimum(np.arange(h) * rows // h, rows - 1)
    xs = np.minimum(np.arange(w) * cols // w, cols - 1)
    cls = grid[ys[:, None], xs[None, :]]
    rng = np.random.default_rng([seed, index])
    noise = rng.integers(-30, 31, (h, w, 3))
    image = np.clip(colours[cls].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return image, values[cls], cls


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode) if mode != "I" else Image.fromarray(arr.astype(np.int32), mode="I")
    img.save(path, **kw)


def _border(label: np.ndarray, value: int = 255) -> np.ndarray:
    """`value` on the pixels whose right or lower neighbour has another label (VOC's void outlines)."""
    out = label.copy()
    edge = np.zeros(label.shape, bool)
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    out[edge] = value
    return out


def _part_ids(cls_map: np.ndarray, has_parts: np.ndarray, n_parts: np.ndarray) -> np.ndarray:
    """Per pixel a part id 1..n of its class's parts (horizontal bands within each tile), 0 where none."""
    h = cls_map.shape[0]
    band = (np.arange(h) % TILE) * 4 // TILE  # 0..3 down each tile
    pid = (band[:, None] % np.maximum(n_parts[cls_map], 1)) + 1
    return np.where(has_parts[cls_map], pid, 0)


def write_pascal(root: Path, n_train: int = 4, n_val: int = 2, size=SIZES["pascal"]) -> Path:
    from ..data.sources import voc_palette

    h, w = size
    values = np.arange(21, dtype=np.uint8)
    colours = palette(21)
    ids = [f"2008_{i:06d}" for i in range(n_train + n_val)]
    train, val = ids[:n_train], ids[n_train:]
    # parts per VOC id (1..20) in the specification above, in its order
    n_parts = np.array([0, 3, 2, 3, 0, 2, 3, 4, 4, 0, 3, 0, 4, 4, 2, 4, 2, 3, 0, 2, 2])
    for i, sid in enumerate(ids):
        img, lab, cls = scene(i, h, w, values, colours)
        lab = _border(lab)
        _save(root / "JPEGImages" / f"{sid}.jpg", img, quality=90)
        pal = Image.fromarray(lab, mode="P")
        pal.putpalette(voc_palette().tolist())
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        pal.save(root / "SegmentationClass" / f"{sid}.png")
        _save(root / "SegmentationClassAug" / f"{sid}.png", lab)  # SBD's labels: grey-level ids
        pids = _part_ids(cls, n_parts > 0, n_parts)
        # uids: class id (no instance) where no part; class · 10^5 + instance · 10^2 + part id where a part
        uids = np.where(pids > 0, cls.astype(np.int64) * 100000 + 100 + pids, cls).astype(np.int32)
        uids[lab == 255] = 0
        folder = "validation" if sid in val else "training"
        _save(root / "labels" / folder / f"{sid}.tif", uids, mode="I")
    (root / "parts.yaml").write_text(PPP_SPEC)
    for folder, names in (("Segmentation", {"train": train, "val": val}),
                          ("SegmentationAug", {"train_aug": train, "val": val})):
        lists = root / "ImageSets" / folder
        lists.mkdir(parents=True, exist_ok=True)
        for name, part in names.items():
            (lists / f"{name}.txt").write_text("\n".join(part) + "\n")
    return root


def write_cityscapes(root: Path, n_train: int = 4, n_val: int = 2, size=SIZES["cityscapes"]) -> Path:
    h, w = size
    label_ids = np.array(sorted(CITYSCAPES_LABELID_TO_TRAINID), dtype=np.uint8)  # the 19 evaluated labelIds
    colours = palette(len(label_ids))
    n_parts = np.array([CITYSCAPES_PART_IDS.get(int(v), 0) for v in label_ids])
    for i in range(n_train + n_val):
        split, city = ("train", "aachen") if i < n_train else ("val", "frankfurt")
        stem = f"{city}_{i:06d}_000019"
        img, lab, cls = scene(i, h, w, label_ids, colours)
        lab[-h // 8:, :] = 1  # the ego vehicle (labelId 1): void
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", img)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
        if split == "val":
            pids = _part_ids(cls, n_parts > 0, n_parts)
            lid = label_ids[cls].astype(np.int64)
            uids = np.where(pids > 0, lid * 100000 + 100 + pids, lid)
            uids[lab == 1] = 1
            _save(root / "gtFinePanopticParts" / split / city / f"{stem}_gtFinePanopticParts.tif", uids, mode="I")
    return root


def write_ade20k(root: Path, n_train: int = 4, n_val: int = 2, size=SIZES["ade20k"]) -> Path:
    h, w = size
    base = root / "ADEChallengeData2016"
    values = np.arange(1, 151, dtype=np.uint8)
    colours = palette(150)
    for i in range(n_train + n_val):
        folder, sid = (("training", f"ADE_train_{i + 1:08d}") if i < n_train else
                       ("validation", f"ADE_val_{i + 1:08d}"))
        img, lab, _ = scene(i, h, w, values, colours)
        lab[: TILE // 4, : TILE // 4] = 0  # 'other': void
        _save(base / "images" / folder / f"{sid}.jpg", img, quality=90)
        _save(base / "annotations" / folder / f"{sid}.png", lab)
    lines = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{k}\t0.001\t100\t10\tclass{k};thing{k}" for k in range(1, 151)]
    (base / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    return root


def write_coco_stuff(root: Path, n_train: int = 4, n_val: int = 2, size=SIZES["coco_stuff"]) -> Path:
    h, w = size
    values = np.arange(182, dtype=np.uint8)
    colours = palette(182)
    for i in range(n_train + n_val):
        split = "train2017" if i < n_train else "val2017"
        img, lab, _ = scene(i, h, w, values, colours)
        lab[:, : TILE // 4] = 255  # unlabeled
        _save(root / "images" / split / f"{i + 1:012d}.jpg", img, quality=90)
        _save(root / "stuffthingmaps_trainval2017" / split / f"{i + 1:012d}.png", lab)
    (root / "labels.txt").write_text("0: unlabeled\n" + "".join(f"{k}: class{k}\n" for k in range(1, 183)))
    return root


def write_em(root: Path, n_train: int = 20, n_val: int = 10, size=SIZES["em"]) -> Path:
    """The reader keeps 10 slices for validation (a seeded split), so n_train + n_val slices with n_val 10."""
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    values = np.array([0, 255], np.uint8)  # membrane, cell
    colours = np.array([[40, 40, 40], [200, 200, 200]], np.uint8)
    vols, labs = [], []
    for i in range(n_train + n_val):
        img, lab, _ = scene(i, h, w, values, colours)
        vols.append(Image.fromarray(img[..., 0]))
        labs.append(Image.fromarray(lab))
    vols[0].save(root / "train-volume.tif", save_all=True, append_images=vols[1:])
    labs[0].save(root / "train-labels.tif", save_all=True, append_images=labs[1:])
    return root


WRITERS = {"pascal": write_pascal, "cityscapes": write_cityscapes, "ade20k": write_ade20k,
           "coco_stuff": write_coco_stuff, "em": write_em}


def write(dataset: str, root: Path, n_train: int, n_val: int, size=None) -> Path:
    """Write `dataset`'s raw layout under `root` with `n_train` / `n_val` images (EM: slices; its reader
    always holds 10 out for validation) at the real size, or `size` (H, W)."""
    if dataset == "em":
        n_val = 10
    return WRITERS[dataset](Path(root), n_train, n_val, size or SIZES[dataset])
