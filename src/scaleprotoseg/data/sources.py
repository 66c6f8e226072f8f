"""Raw dataset layouts (official-implementation §6) → samples of the prepared format.

Each `scan_<name>(root)` reads a dataset in its original download layout and returns a `Source`: the class
names, the splits (ids) and, per id, the files to read. `Source.load(id)` returns `(image, label, parts)`
as uint8 arrays in the prepared format (classes 0..K−1, 255 = void). Nothing here writes under the raw
folder. Label maps:

- pascal: VOC ids 0..20 are the classes (0 = background), 255 = void; palette PNGs are read as palette
  indices, never as RGB.
- cityscapes: gtFine labelIds → the 19 train ids (7 → road = 0, …), every other id → void.
- ade20k: 0 ("other") → void, k → k − 1.
- coco_stuff: stuffthingmaps values 0..181 are the classes, 255 = void.
- folder: masks hold class indices (or the values listed in the classes file), `void` as declared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .prepared import VOID

PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelId → train id (the 19 evaluation classes); every id not listed is void.
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def lookup_table(mapping: dict[int, int], default: int = VOID) -> np.ndarray:
    """A 256-entry uint8 table: value → mapped value (default for every value not in `mapping`)."""
    table = np.full(256, default, np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table


CITYSCAPES_TABLE = lookup_table(CITYSCAPES_LABELID_TO_TRAINID)
ADE_TABLE = lookup_table({k: k - 1 for k in range(1, 151)})
PASCAL_TABLE = lookup_table({k: k for k in range(21)})


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}).") from exc


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel label image as its stored values: grayscale values or palette **indices**."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: a label map must be single-channel (grayscale or palette), got mode {img.mode}.")
            arr = np.asarray(img)
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing.") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable label image ({exc}).") from exc
    if arr.max(initial=0) > 255:
        raise DataError(f"{path}: label values up to {int(arr.max())} do not fit the prepared uint8 format.")
    return arr.astype(np.uint8)


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

    def load(self, sid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        img_path, lab_path, part_path = self.files[sid]
        image = read_image(img_path)
        label = self.label_map(read_index_png(lab_path))
        if image.shape[:2] != label.shape:
            raise DataError(f"{lab_path}: label {label.shape} and image {img_path.name} {image.shape[:2]} differ in size.")
        parts = read_index_png(part_path) if part_path is not None else None
        return image, label, parts

    def missing(self) -> list[Path]:
        """Files the split lists name but the folder lacks."""
        return [p for f in self.files.values() for p in f if p is not None and not p.is_file()]


def _read_list(path: Path) -> list[str]:
    """Split list lines → ids: each line may be 'id' or '/JPEGImages/id.jpg /SegmentationClassAug/id.png'."""
    ids = []
    for line in path.read_text().splitlines():
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
        splits["project"] = splits.pop("train")  if "train" in splits else list(splits["train_aug"])
        splits["train"] = splits.pop("train_aug")
    ids = sorted({i for v in splits.values() for i in v})
    files = {i: (root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png", None) for i in ids}
    return Source("pascal", PASCAL_CLASSES, splits, files, lambda a: PASCAL_TABLE[a],
                  projection_split="project" if "project" in splits else "train")


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
            files[sid] = (p, lab, None)
            del parts  # part annotations are decoded by the interpretability metrics' loader (not yet wired)
    if not splits["train"] or not splits["val"]:
        raise DataError(f"{root}: no images under leftImg8bit/train/<city>/ or leftImg8bit/val/<city>/.")
    return Source("cityscapes", CITYSCAPES_CLASSES, splits, files, lambda a: CITYSCAPES_TABLE[a])


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
    classes = _ade_names(base)
    return Source("ade20k", classes, splits, files, lambda a: ADE_TABLE[a])


def _ade_names(base: Path) -> tuple[str, ...]:
    info = base / "objectInfo150.csv"
    if info.is_file():
        rows = info.read_text().splitlines()[1:]
        names = [r.split(",")[-1].split(";")[0].strip().strip('"') for r in rows if r.strip()]
        if len(names) == 150:
            return tuple(names)
    return tuple(f"class_{k:03d}" for k in range(1, 151))


def scan_folder(root: Path, seed: int = 0, val_fraction: float = 0.2) -> Source:
    """Bring your own: images/ and masks/ with matching stems, classes.json (or .yaml) and optional
    splits/{train,val}.txt; without split lists, a seeded split."""
    root = Path(root)
    for need in ("images", "masks"):
        if not (root / need).is_dir():
            raise DataError(f"{root}: the folder dataset needs {need}/ (images/ and masks/ with matching file stems).")
    spec = _classes_file(root)
    names = spec["names"]
    void = int(spec.get("void", VOID))
    values = spec.get("values", list(range(len(names))))
    if len(values) != len(names):
        raise DataError(f"{root}: classes file lists {len(names)} names but {len(values)} values.")
    table = lookup_table({int(v): k for k, v in enumerate(values)}, default=VOID)
    images = {p.stem: p for p in sorted((root / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted((root / "masks").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise DataError(f"{root}: these stems have an image without a mask or a mask without an image: {unmatched[:10]}.")
    ids = sorted(images)
    if (root / "splits" / "train.txt").is_file() and (root / "splits" / "val.txt").is_file():
        splits = {s: _read_list(root / "splits" / f"{s}.txt") for s in ("train", "val")}
    else:
        rng = np.random.default_rng(seed)
        perm = [ids[i] for i in rng.permutation(len(ids))]
        n_val = max(1, int(round(val_fraction * len(ids))))
        splits = {"train": sorted(perm[n_val:]), "val": sorted(perm[:n_val])}

    def label_map(a: np.ndarray) -> np.ndarray:
        out = table[a]
        out[a == void] = VOID
        return out

    files = {i: (images[i], masks[i], None) for i in ids}
    return Source("folder", tuple(names), splits, files, label_map)


def _classes_file(root: Path) -> dict:
    for name in ("classes.json", "classes.yaml", "classes.yml"):
        path = root / name
        if path.is_file():
            text = path.read_text()
            if name.endswith(".json"):
                spec = json.loads(text)
            else:
                import yaml

                spec = yaml.safe_load(text)
            if not isinstance(spec, dict) or not isinstance(spec.get("names"), list) or not spec["names"]:
                raise DataError(f"{path}: expected a mapping with a non-empty list `names` (and optional `values`, `void`).")
            return spec
    raise DataError(f"{root}: classes.json (or classes.yaml) is missing: list the class `names` (optional `values`, `void`).")


SCANNERS = {"pascal": scan_pascal, "cityscapes": scan_cityscapes, "ade20k": scan_ade20k, "folder": scan_folder}


def prepare_source(source: Source, out: Path, workers: int = 2, skip_corrupt: bool = False, progress: bool = True):
    """Convert `source` into the prepared format at `out` (atomically), `workers` files at a time.

    Every file the split lists name is checked first: missing files stop the stage with their list. A file
    that cannot be read stops it too, with the list of every such file — unless `skip_corrupt`, in which
    case those samples are left out and reported. Returns the meta and the skipped ids."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from ..io import atomic_dir
    from .prepared import DatasetMeta, save_sample

    missing = source.missing()
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:20])
        raise DataError(f"{len(missing)} file(s) named by the split lists are missing, e.g.\n  {shown}\n"
                        "Restore them or fix the split lists; nothing was written.")
    meta = DatasetMeta(name=source.name, classes=source.classes, splits={}, parts=source.parts,
                       projection_split=source.projection_split)
    ids = sorted(source.files)
    out = Path(out)

    def convert(sid: str, tmp: Path):
        try:
            image, label, parts = source.load(sid)
            bad = (label >= len(source.classes)) & (label != VOID)
            if bad.any():
                raise DataError(f"{source.files[sid][1]}: label values {sorted(set(label[bad].tolist()))[:10]} are not classes.")
            save_sample(tmp, sid, image, label, parts)
            return sid, None
        except DataError as exc:
            return sid, str(exc)

    with atomic_dir(out) as tmp:
        for sub in ("images", "labels", "parts"):
            (tmp / sub).mkdir()
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            results = list(tqdm(pool.map(lambda s: convert(s, tmp), ids), total=len(ids), desc=f"prepare {source.name}",
                                disable=not progress, leave=False))
        errors = {sid: err for sid, err in results if err}
        if errors and not skip_corrupt:
            shown = "\n  ".join(errors.values())
            raise DataError(f"{len(errors)} file(s) could not be converted:\n  {shown}\n"
                            f"Fix or remove them, or set data_sources.{source.name}.skip_corrupt: true to leave them out.")
        splits = {k: tuple(i for i in v if i not in errors) for k, v in source.splits.items()}
        meta = DatasetMeta(name=meta.name, classes=meta.classes, splits=splits, parts=meta.parts,
                           projection_split=meta.projection_split)
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return meta, sorted(errors)
