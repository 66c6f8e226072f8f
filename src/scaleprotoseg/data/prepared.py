"""The prepared on-disk format shared by every dataset (the embedded one and the real ones).

```
<root>/
  meta.json                  {"format", "name", "classes", "void", "parts", "splits", "projection_split"}
  images/<id>.png|jpg        RGB, uint8 (a JPEG or RGB PNG source is kept byte for byte: no re-encoding, no loss)
  labels/<id>.png            uint8 class index 0..K-1, 255 = void
  parts/<id>.png             uint8 part index within the pixel's class (1..n_c), 0 = no part (optional)
```

Images are stored once; `meta.json["splits"]` lists the ids of each split (`train`, `val`, and the split
used for prototype projection, which may be a subset of `train`, as Pascal's `train` is of `train_aug`).
`meta.json["parts"]` maps a class name to its ordered part names (part index = position + 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..errors import DataError

FORMAT = "scaleprotoseg-prepared-v1"
VOID = 255


@dataclass(frozen=True)
class DatasetMeta:
    name: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[str, ...]]
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    projection_split: str = "train"
    void: int = VOID

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_parts(self) -> bool:
        return bool(self.parts)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "classes": list(self.classes),
            "void": self.void,
            "parts": {k: list(v) for k, v in self.parts.items()},
            "splits": {k: list(v) for k, v in self.splits.items()},
            "projection_split": self.projection_split,
        }


def read_meta(root: str | Path) -> DatasetMeta:
    """Read and validate `<root>/meta.json`."""
    root = Path(root)
    path = root / "meta.json"
    if not path.is_file():
        raise DataError(
            f"No prepared dataset at {root}: {path.name} is missing. Run the data preparation stage "
            "(`dvc repro prepare`) or check the dataset root in params.yaml."
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-run the data preparation stage.") from exc
    if raw.get("format") != FORMAT:
        raise DataError(f"{path}: format {raw.get('format')!r} is not {FORMAT!r}; re-run data preparation.")
    classes = tuple(raw["classes"])
    if not 1 <= len(classes) < VOID:
        raise DataError(f"{path}: {len(classes)} classes; a prepared dataset holds 1..254 classes.")
    meta = DatasetMeta(
        name=raw["name"],
        classes=classes,
        splits={k: tuple(v) for k, v in raw["splits"].items()},
        parts={k: tuple(v) for k, v in raw.get("parts", {}).items()},
        projection_split=raw.get("projection_split", "train"),
        void=int(raw.get("void", VOID)),
    )
    if meta.projection_split not in meta.splits:
        raise DataError(f"{path}: projection_split {meta.projection_split!r} is not one of the splits.")
    return meta


def _check_array(kind: str, sid: str, arr: np.ndarray, ndim: int) -> None:
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise DataError(f"sample {sid}: {kind} must be uint8 with {ndim} dims, got {arr.dtype} {arr.shape}")


def write_prepared(
    root: str | Path,
    meta: DatasetMeta,
    samples: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
) -> Path:
    """Write a prepared dataset atomically: the whole folder appears only when every sample is written.

    `samples` yields `(id, image HxWx3 uint8, label HxW uint8, parts HxW uint8 or None)`.
    """
    root = Path(root)
    with atomic_dir(root) as tmp:
        for sub in ("images", "labels", "parts"):
            (tmp / sub).mkdir()
        for sid, image, label, parts in samples:
            bad = (label >= meta.num_classes) & (label != meta.void)
            if bad.any():
                raise DataError(f"sample {sid}: label values {sorted(set(label[bad].tolist()))} are not classes")
            save_sample(tmp, sid, image, label, parts)
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return root


def save_sample(root: Path, sid: str, image: np.ndarray, label: np.ndarray, parts: np.ndarray | None,
                original: Path | None = None) -> list[Path]:
    """Write one sample under `root` (images/, labels/, parts/), after checking shapes and types; return the
    paths written. `original`: the JPEG or RGB PNG file `image` was decoded from, stored byte for byte
    (no re-encoding, no loss) instead of a new PNG."""
    import shutil

    from PIL import Image

    _check_array("image", sid, image, 3)
    _check_array("label", sid, label, 2)
    if image.shape[:2] != label.shape:
        raise DataError(f"sample {sid}: image {image.shape[:2]} and label {label.shape} differ in size")
    if original is not None:
        ext = ".png" if original.suffix.lower() == ".png" else ".jpg"
        written = [Path(shutil.copyfile(original, root / "images" / f"{sid}{ext}"))]
    else:
        written = [root / "images" / f"{sid}.png"]
        Image.fromarray(image).save(written[0])
    written.append(root / "labels" / f"{sid}.png")
    Image.fromarray(label).save(written[-1])
    if parts is not None:
        _check_array("parts", sid, parts, 2)
        written.append(root / "parts" / f"{sid}.png")
        Image.fromarray(parts).save(written[-1])
    return written


def _read_png(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path} is missing; re-run the data preparation stage for this dataset.")
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "RGB":
                img = img.convert("RGB")
            elif img.mode not in ("L", "P"):
                raise DataError(f"{path}: expected a single-channel label image, got mode {img.mode}.")
            return np.asarray(img, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{path} is not a readable image ({exc.__class__.__name__}: {exc}); "
            "delete it and re-run the data preparation stage."
        ) from exc


class PreparedDataset:
    """Random access to one split of a prepared dataset, as numpy arrays (no transforms)."""

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        if split not in self.meta.splits:
            raise DataError(
                f"{self.root}: no split {split!r}; available: {sorted(self.meta.splits)}."
            )
        self.split = split
        self.ids = self.meta.splits[split]

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> np.ndarray:
        path = self.root / "images" / f"{self.ids[i]}.jpg"
        return _read_png(path if path.is_file() else path.with_suffix(".png"), "RGB")

    def label(self, i: int) -> np.ndarray:
        sid = self.ids[i]
        label = _read_png(self.root / "labels" / f"{sid}.png", "L")
        bad = (label >= self.meta.num_classes) & (label != self.meta.void)
        if bad.any():
            raise DataError(
                f"{self.root / 'labels' / (sid + '.png')}: label values {sorted(set(label[bad].tolist()))} "
                f"are outside 0..{self.meta.num_classes - 1} and not void ({self.meta.void}); "
                "fix the label map or re-run the data preparation stage."
            )
        return label

    def parts(self, i: int) -> np.ndarray:
        if not self.meta.has_parts:
            raise DataError(f"{self.root}: dataset {self.meta.name!r} has no part annotations.")
        return _read_png(self.root / "parts" / f"{self.ids[i]}.png", "L")

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.image(i), self.label(i)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{self.root}: sample {self.ids[i]} has image {image.shape[:2]} but label {label.shape}."
            )
        return image, label
