"""Raw dataset layouts (docs/method.md §6) → samples of the prepared format.

Each `scan_<name>(root)` reads a dataset in its original download layout and returns a `Source`: the class
names, the splits (ids), per id the files to read, and `notes` on what the reader had to assume (shown by
the preparation stage). `Source.load(id)` returns `(image, label, parts)` as uint8 arrays in the prepared
format (classes 0..K−1, 255 = void). Nothing here writes under the raw folder. Every dataset keeps its own
class names (`class_names.py`). Label maps:

- pascal: VOC ids 0..20 are the classes (0 = background), 255 = void; palette PNGs are read as palette
  indices, never as RGB.
- cityscapes: gtFine labelIds → the 19 train ids (7 → road = 0, …), every other id → void.
- ade20k: 0 ("other") → void, k → k − 1; names from objectInfo150.txt (or .csv), else class_001… and a note.
- coco_stuff: stuffthingmaps values 0..181 are the classes, 255 = void; value v is named by labels.txt's
  id v + 1 (labels.txt numbers 1..182, 0 = unlabeled); a malformed labels.txt stops the stage, a missing
  one gives class_000… and a note.
- em: ISBI 2012 TIFF stacks; label 0 (membrane) → 0, 255 (cell) → 1; a seeded 20/10 split of the 30 slices.
- cityscapes parts: gtFinePanopticParts uids decoded into per-class part ids (`panoptic_parts.py`).
- pascal parts: Pascal-Panoptic-Parts uid TIFFs (`labels/<split>/<id>.tif`) decoded, then each file part id
  mapped to its class's part index with `parts.yaml` (the package's `ppp_datasetspec.yaml`):
  `scene_class2part_classes` orders the parts (index = position + 1) and `countable_pids_groupings` folds
  the countable fine parts (e.g. a car's wheels 20..29) into one.
  For both, uids that fit no format of the specification, and part ids the class does not declare, stop
  the stage with the file's name (`panoptic_parts.py` has the rules and their sources).
- folder: masks hold class indices (or the values listed in the classes file), `void` as declared; every
  file it reads must lie under the dataset folder (a symbolic link leaving it is refused: the dataset is what
  DVC tracks, so a file outside it could change unseen; a link to the dataset folder itself is fine);
  optional part masks `parts/<stem>.png` (part index within the pixel's class, 1..n_c, 0 = no part) with
  the classes file's `parts: {class: [part names]}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .class_names import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELID_TO_TRAINID,
    CITYSCAPES_PARTS,
    PASCAL_CLASSES,
    ade_names,
    coco_stuff_names,
    declared_parts,
    folder_classes_file,
)
from .panoptic_parts import (  # noqa: F401 (re-exported)
    decode_uids,
    pascal_panoptic_parts,
    pascal_part_table,
    read_panoptic_parts,
    read_pascal_parts,
    read_uids,
)
from .prepared import VOID
from .readers import (  # noqa: F401 (re-exported)
    IMAGE_SUFFIXES,
    inside_root,
    lookup_table,
    read_image,
    read_index_png,
    read_text,
    voc_palette,
)

CITYSCAPES_TABLE = lookup_table(CITYSCAPES_LABELID_TO_TRAINID)
CITYSCAPES_TRAINID_TO_LABELID = lookup_table({v: k for k, v in CITYSCAPES_LABELID_TO_TRAINID.items()}, default=0)
ADE_TABLE = lookup_table({k: k - 1 for k in range(1, 151)})
PASCAL_TABLE = lookup_table({k: k for k in range(21)})


@dataclass
class Source:
    """A raw dataset: class names, split ids, and how to load one sample in the prepared format."""

    name: str
    classes: tuple[str, ...]
    splits: dict[str, list[str]]
    files: dict[str, tuple[Path, Path, Path | None]]  # id → (image, label, parts or None)
    label_map: Callable[[np.ndarray], np.ndarray]
    projection_split: str = "train"
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    part_reader: Callable[[Path], np.ndarray] | None = None  # part file → local part ids (uint8)
    loader: Callable[[str], tuple] | None = None  # a custom reader (EM's multi-page TIFFs)
    extra: tuple[Path, ...] = ()  # files every sample's conversion depends on (classes file, parts spec)
    part_check: Callable[[np.ndarray, np.ndarray, Path], np.ndarray] | None = None  # (label, parts, file) → parts
    notes: tuple[str, ...] = ()  # what the reader had to assume (e.g. names files not found), for the user

    def load(self, sid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self.loader is not None:
            return self.loader(sid)
        img_path, lab_path, part_path = self.files[sid]
        image = read_image(img_path)
        if lab_path is None:  # a test image: no label; stored as all void so evaluation can never use it
            return image, np.full(image.shape[:2], VOID, np.uint8), (np.zeros(image.shape[:2], np.uint8) if self.parts else None)
        try:
            label = self.label_map(read_index_png(lab_path))
        except DataError as exc:
            raise DataError(str(exc) if str(exc).startswith(str(lab_path)) else f"{lab_path}: {exc}") from None
        if image.shape[:2] != label.shape:
            turned = (" (the image is read upright, its EXIF orientation applied: draw the mask over the upright "
                      "image, or save the image without the rotation tag)") if label.shape == image.shape[1::-1] else ""
            raise DataError(f"{lab_path}: label {label.shape} and image {img_path.name} {image.shape[:2]} differ in size{turned}.")
        parts = None
        if part_path is not None:
            parts = self.part_reader(part_path) if self.part_reader is not None else read_index_png(part_path)
            if parts.shape != label.shape:
                raise DataError(f"{part_path}: parts {parts.shape} and label {lab_path.name} {label.shape} differ in size.")
            if self.part_check is not None:
                parts = self.part_check(label, parts, part_path)
        if self.parts and parts is None:
            parts = np.zeros_like(label)  # an image without part annotations: no visible part
        return image, label, parts

    def missing(self) -> list[Path]:
        """Files the split lists name but the folder lacks."""
        return [p for f in self.files.values() for p in f if p is not None and not p.is_file()]


def _read_list(path: Path) -> list[str]:
    """Split list lines → ids: each line may be 'id' or '/JPEGImages/id.jpg /SegmentationClassAug/id.png'."""
    ids = []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line:
            ids.append(Path(line.split()[0]).stem)
    return ids


def scan_pascal(root: Path) -> Source:
    root = Path(root)
    labels = root / "SegmentationClassAug"
    if not labels.is_dir():
        labels = root / "SegmentationClass"
    if not (root / "JPEGImages").is_dir() or not labels.is_dir():
        raise DataError(f"{root}: expected JPEGImages/ and SegmentationClassAug/ (or SegmentationClass/) of VOC2012; "
                        "see the README for the layout.")
    lists = [root / "ImageSets" / "SegmentationAug", root / "ImageSets" / "Segmentation"]
    splits = {}
    for d in lists:
        for name in ("train_aug", "train", "val"):
            if name not in splits and (d / f"{name}.txt").is_file():
                splits[name] = _read_list(d / f"{name}.txt")
    if "val" not in splits or not ({"train", "train_aug"} & set(splits)):
        raise DataError(f"{root}: split lists ImageSets/SegmentationAug/{{train_aug,train,val}}.txt "
                        "(or ImageSets/Segmentation/{train,val}.txt) are missing.")
    if "train_aug" in splits:
        splits["project"] = splits.pop("train") if "train" in splits else list(splits["train_aug"])
        splits["train"] = splits.pop("train_aug")
    ids = sorted({i for v in splits.values() for i in v})
    part_files, parts, reader, spec_path = pascal_panoptic_parts(root)
    files = {i: (root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png", part_files.get(i)) for i in ids}
    test_list = root / "ImageSets" / "Segmentation" / "test.txt"
    if test_list.is_file():  # the VOC2012 test images (unlabelled): for the evaluation server's export
        splits["test"] = [i for i in _read_list(test_list) if i not in files]
        files.update({i: (root / "JPEGImages" / f"{i}.jpg", None, None) for i in splits["test"]})
    return Source("pascal", PASCAL_CLASSES, splits, files, lambda a: PASCAL_TABLE[a],
                  projection_split="project" if "project" in splits else "train", parts=parts, part_reader=reader,
                  extra=(spec_path,) if spec_path else ())


def scan_cityscapes(root: Path) -> Source:
    root = Path(root)
    if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
        raise DataError(f"{root}: expected leftImg8bit/ and gtFine/ of Cityscapes; see the README for the layout.")
    splits, files = {}, {}
    for split in ("train", "val"):
        imgs = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        splits[split] = []
        for p in imgs:
            stem = p.name[: -len("_leftImg8bit.png")]
            city = p.parent.name
            lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            parts = root / "gtFinePanopticParts" / split / city / f"{stem}_gtFinePanopticParts.tif"
            sid = f"{split}_{stem}"
            splits[split].append(sid)
            files[sid] = (p, lab, parts if parts.is_file() else None)
    if not splits["train"] or not splits["val"]:
        raise DataError(f"{root}: no images under leftImg8bit/train/<city>/ or leftImg8bit/val/<city>/.")
    test = sorted((root / "leftImg8bit" / "test").glob("*/*_leftImg8bit.png"))
    if test:  # unlabelled: for the evaluation server's export
        splits["test"] = []
        for p in test:
            sid = f"test_{p.name[: -len('_leftImg8bit.png')]}"
            splits["test"].append(sid)
            files[sid] = (p, None, None)
    has_parts = any(f[2] is not None for f in files.values())
    return Source("cityscapes", CITYSCAPES_CLASSES, splits, files, lambda a: CITYSCAPES_TABLE[a],
                  parts=CITYSCAPES_PARTS if has_parts else {}, part_reader=read_panoptic_parts)


def scan_ade20k(root: Path) -> Source:
    root = Path(root)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    if not (base / "images").is_dir() or not (base / "annotations").is_dir():
        raise DataError(f"{root}: expected ADEChallengeData2016/images/ and annotations/; see the README.")
    splits, files = {}, {}
    for split, folder in (("train", "training"), ("val", "validation")):
        splits[split] = []
        for p in sorted((base / "images" / folder).glob("*.jpg")):
            splits[split].append(p.stem)
            files[p.stem] = (p, base / "annotations" / folder / f"{p.stem}.png", None)
    classes, notes = ade_names(base, root)
    return Source("ade20k", classes, splits, files, lambda a: ADE_TABLE[a], notes=notes)


def scan_coco_stuff(root: Path) -> Source:
    """COCO 2017 images + stuffthingmaps: values 0..181 are the classes, 255 = void; names from labels.txt."""
    root = Path(root)
    img_dirs = {"train": ["images/train2017", "train2017", "images/train"], "val": ["images/val2017", "val2017", "images/val"]}
    lab_dirs = {"train": ["stuffthingmaps_trainval2017/train2017", "stuffthingmaps/train2017", "annotations/train2017", "annotations_png/train"],
                "val": ["stuffthingmaps_trainval2017/val2017", "stuffthingmaps/val2017", "annotations/val2017", "annotations_png/val"]}
    splits, files = {}, {}
    for split in ("train", "val"):
        idir = next((root / d for d in img_dirs[split] if (root / d).is_dir()), None)
        ldir = next((root / d for d in lab_dirs[split] if (root / d).is_dir()), None)
        if idir is None or ldir is None:
            raise DataError(f"{root}: expected images/{split}2017/ and stuffthingmaps_trainval2017/{split}2017/ "
                            "(COCO 2017 images and COCO-Stuff stuffthingmaps); see the README.")
        splits[split] = []
        for p in sorted(idir.glob("*.jpg")):
            splits[split].append(p.stem)
            files[p.stem] = (p, ldir / f"{p.stem}.png", None)
    classes, notes = coco_stuff_names(root)  # PNG value v is labels.txt's id v + 1 (0 = unlabeled there)
    return Source("coco_stuff", classes, splits, files, lambda a: a.copy(), notes=notes)


def scan_em(root: Path, seed: int = 42, n_val: int = 10) -> Source:
    """ISBI 2012: train-volume.tif / train-labels.tif (30 slices); 0 → membrane (0), 255 → cell (1); a
    seeded train/val split of the slices."""
    root = Path(root)
    vol, labs = root / "train-volume.tif", root / "train-labels.tif"
    for p in (vol, labs):
        if not p.is_file():
            raise DataError(f"{root}: {p.name} is missing (ISBI 2012 EM); see the README.")

    def n_frames(path: Path) -> int:
        try:
            with Image.open(path) as img:
                return getattr(img, "n_frames", 1)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path} is not a readable TIFF stack ({exc}).") from exc

    n = n_frames(vol)
    if n_frames(labs) != n:
        raise DataError(f"{root}: {vol.name} has {n} slices but {labs.name} has {n_frames(labs)}.")
    ids = [f"slice_{k:02d}" for k in range(n)]
    perm = np.random.default_rng(seed).permutation(n)
    val = sorted(ids[k] for k in perm[: min(n_val, n - 1)])
    splits = {"train": [i for i in ids if i not in val], "val": val}

    def frame(path: Path, k: int) -> np.ndarray:
        with Image.open(path) as img:
            img.seek(k)
            return np.asarray(img).copy()

    def loader(sid: str):
        k = int(sid.split("_")[1])
        gray = frame(vol, k).astype(np.uint8)
        lab = frame(labs, k)
        label = np.where(lab > 127, 1, 0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), label, None

    files = {i: (vol, labs, None) for i in ids}
    return Source("em", ("membrane", "cell"), splits, files, lambda a: a, loader=loader)


def scan_folder(root: Path, seed: int = 0, val_fraction: float = 0.2) -> Source:
    """Bring your own: images/ and masks/ with matching stems, classes.json (or .yaml) and optional
    splits/{train,val}.txt (without split lists, a seeded split); optional part masks parts/<stem>.png with
    the classes file's `parts` (`_folder_parts`)."""
    root = Path(root)
    for need in ("images", "masks"):
        if not (root / need).is_dir():
            raise DataError(f"{root}: the folder dataset needs {need}/ (images/ and masks/ with matching file stems).")
    spec, spec_path = folder_classes_file(root)
    names = spec["names"]  # checked by folder_classes_file: distinct names, distinct values 0..255, void apart
    void = int(spec.get("void", VOID))
    values = spec.get("values", list(range(len(names))))
    table = lookup_table({int(v): k for k, v in enumerate(values)}, default=VOID)
    known = np.zeros(256, bool)
    known[[int(v) for v in values if 0 <= int(v) < 256]] = True
    if 0 <= void < 256:
        known[void] = True
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    inside_root(root, [spec_path, *images.values(), *masks.values()])
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise DataError(f"{root}: these stems have an image without a mask or a mask without an image: {unmatched[:10]}.")
    ids = sorted(images)
    if not ids:
        raise DataError(f"{root / 'images'}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}); nothing to prepare.")
    if (root / "splits" / "train.txt").is_file() and (root / "splits" / "val.txt").is_file():
        splits = {s: _read_list(root / "splits" / f"{s}.txt") for s in ("train", "val")}
        for s, listed in splits.items():
            lost = [i for i in listed if i not in images]
            if lost:
                raise DataError(f"{root / 'splits' / f'{s}.txt'}: {len(lost)} id(s) have no image in images/ and mask in "
                                f"masks/, e.g. {lost[:10]}; fix the list or add the files.")
            if not listed:
                raise DataError(f"{root / 'splits' / f'{s}.txt'} lists no image; every split needs at least one.")
    else:
        rng = np.random.default_rng(seed)
        perm = [ids[i] for i in rng.permutation(len(ids))]
        n_val = max(1, int(round(val_fraction * len(ids))))
        splits = {"train": sorted(perm[n_val:]), "val": sorted(perm[:n_val])}
        if not splits["train"]:
            raise DataError(f"{root / 'images'}: {len(ids)} image(s) leave none for training after the validation "
                            "split; add images or write splits/train.txt and splits/val.txt.")

    def label_map(a: np.ndarray) -> np.ndarray:
        unknown = ~known[a] if a.max() < 256 else np.ones(1, bool)
        if unknown.any():
            vals = sorted({int(v) for v in np.unique(a) if not (0 <= v < 256 and known[v])})
            raise DataError(f"mask values {vals[:10]} are neither class values nor the void value {void} of "
                            f"{spec_path.name}; add them to `values` (with names) or map them to void.")
        out = table[a]
        out[a == void] = VOID
        return out

    parts, part_files, check = _folder_parts(root, spec, spec_path, images)
    files = {i: (images[i], masks[i], part_files.get(i)) for i in ids}
    return Source("folder", tuple(names), splits, files, label_map, parts=parts, part_check=check, extra=(spec_path,))


def _folder_parts(root: Path, spec: dict, spec_path: Path, images: dict[str, Path]):
    """Optional part masks `parts/<stem>.png` (part index within the pixel's class, 1..n_c; 0 = no part) and
    the classes file's `parts` ({class: [part names]}) → (parts, stem → mask, check of a mask against its
    label). Images without a mask get no visible part; part values on void pixels are ignored."""
    names = [str(n) for n in spec["names"]]
    declared = declared_parts(spec.get("parts"), names, spec_path)
    folder = root / "parts"
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} if folder.is_dir() else {}
    if not declared:
        if files:
            raise DataError(f"{folder}: part masks found but {spec_path} has no `parts` entry naming each class's "
                            'parts, e.g. "parts": {"car": ["wheel", "window"]} (README, folder dataset).')
        return {}, {}, None
    if not files:
        raise DataError(f"{spec_path}: `parts` is declared but {folder} holds no part masks (parts/<stem>.png).")
    inside_root(root, files.values())
    orphans = sorted(set(files) - set(images))
    if orphans:
        raise DataError(f"{folder}: these part masks have no image in images/: {orphans[:10]}.")
    n_parts = np.zeros(256, np.int64)
    n_parts[: len(names)] = [len(declared.get(n, ())) for n in names]

    def check(label: np.ndarray, parts: np.ndarray, path: Path) -> np.ndarray:
        void = label == VOID
        bad = (parts > n_parts[label]) & ~void
        if bad.any():
            found = sorted({(int(c), int(v)) for c, v in zip(label[bad], parts[bad])})
            shown = "; ".join(f"{names[c]}: value {v} (its parts: 1..{n_parts[c]})" if n_parts[c] else
                              f"{names[c]}: value {v} (it has no parts)" for c, v in found[:5])
            raise DataError(f"{path}: part values larger than the number of parts {spec_path.name} declares for "
                            f"the pixel's class: {shown}.")
        return np.where(void, 0, parts).astype(np.uint8)

    return declared, files, check


# How to give each dataset part annotations (consistency and stability need them).
PARTS_HOWTO = {
    "folder": "add parts/<stem>.png and a `parts` entry in classes.json (README, 'Raw datasets', folder)",
    "pascal": "add Pascal-Panoptic-Parts' labels/<split>/<id>.tif and parts.yaml (README, 'Raw datasets')",
    "cityscapes": "add gtFinePanopticParts/{train,val}/<city>/*.tif (README, 'Raw datasets')",
}


def no_parts_note(dataset: str) -> str:
    """Why consistency and stability are empty for `dataset`, and how to give it parts where it can have them."""
    how = PARTS_HOWTO.get(dataset)
    return (f"consistency and stability: – because {dataset} has no part annotations (both are undefined, NaN)"
            + (f"; {how}." if how else "."))


SCANNERS = {"pascal": scan_pascal, "cityscapes": scan_cityscapes, "ade20k": scan_ade20k, "coco_stuff": scan_coco_stuff,
            "em": scan_em, "folder": scan_folder}
