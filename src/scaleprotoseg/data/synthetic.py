"""The embedded default dataset: textured toy scenes generated deterministically from a seed.

A fresh clone has no real dataset, so the pipeline generates this one in seconds (a smoke test and a
teaching set, never compared with the paper). Every image is a pure function of
`(spec.seed, split, index)`. Each property exists to make one aspect of ScaleProtoSeg measurable:

* **Classes and parts.** Scenes hold 2-4 objects of five classes (`house`, `tree`, `car`, `tower`,
  `bridge`) on a background (`background`, class 0). Each object is built from 2-3 named parts
  (`PARTS`; a car's two wheels are one part with two connected components), and every image comes
  with a part-id mask, so part-based interpretability metrics (do prototypes fire on one part?) are
  exact rather than approximated.
* **Scale.** An object's long side is `BASE_SIZE * image_size * scale`, with `scale` drawn
  log-uniformly in `[min_scale, max_scale]` (4x by default: 18 to 72 px in 128-px images), so every
  class appears at very different scales, which is what multi-scale prototypes are for. Texture grain
  grows with the object (`sqrt(scale)`), as in photos.
* **Context pair.** `tower` and `bridge` are made of the *same* two parts with the *same* textures
  (`end`, `middle`: three square blocks end/middle/end), stacked vertically (tower) or in a row
  (bridge). Locally, within one block, they are identical; only the larger-scale arrangement tells them
  apart, so a model that looks only locally must confuse them.
* **Real textures.** Backgrounds and parts are cut from photographs bundled inside scikit-image (read
  from the package's own data folder, never downloaded; see `TEXTURES`), tinted where the source is
  grayscale, and randomly cropped, rescaled, flipped and colour-jittered per instance. Background
  textures (sky, ground) are never used by an object part.
* **Void band.** As Pascal VOC's 255 border, a band of `void_width` pixels along each object's
  outline (inside the object, against the background or another object) is labelled 255 = void and
  has no part. Part boundaries inside an object are not void.

Labels are uint8 class indices (0 = background, 255 = void); parts are uint8 local part indices
(position + 1 in `PARTS[class]`), 0 on background and void. `generate` writes the prepared on-disk
format of `scaleprotoseg.data.prepared`.

Objects lie wholly inside the image and are placed one after another, later ones on top, only where
every earlier object keeps at least `MIN_VISIBLE` of its area (a crowded image retries with smaller
objects until `min_objects` fit); label and part masks describe what is visible. `render_sample` also
returns the generator's record (placed objects, instance map) for tests and figures.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..config import EmbeddedConfig
from ..errors import ConfigError
from .prepared import VOID, DatasetMeta, write_prepared
from .textures import (  # noqa: F401 (re-exported: the textures are part of the generator's description)
    BACKGROUND_TEXTURES,
    PART_TEXTURES,
    TEXTURES,
    Texture,
    render_texture,
    texture_path,
)

SyntheticSpec = EmbeddedConfig  # the `embedded` section of params.yaml (config.EmbeddedConfig)


CLASSES: tuple[str, ...] = ("background", "house", "tree", "car", "tower", "bridge")
PARTS: dict[str, tuple[str, ...]] = {
    "house": ("wall", "roof", "door"),
    "tree": ("trunk", "crown"),
    "car": ("body", "window", "wheel"),
    "tower": ("end", "middle"),
    "bridge": ("end", "middle"),
}
CONTEXT_PAIR: tuple[str, str] = ("tower", "bridge")  # same parts and textures, different arrangement

BASE_SIZE = 0.28  # long side of an object at scale 1, as a fraction of the image size
MIN_SIDE = 9  # px: the smallest long side drawn (binds only for images under 64 px at min_scale 0.5)
MAX_SIDE = 0.9  # fraction of the image size: the largest long side drawn
MIN_VISIBLE = 0.6  # fraction of its own area every object keeps visible after later objects are drawn
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True, eq=False)
class PlacedObject:
    """One object of a sample, as the generator placed it (before occlusion and the void band)."""

    cls: int  # class index into CLASSES
    scale: float  # size factor, log-uniform in [min_scale, max_scale]
    top: int
    left: int
    height: int
    width: int
    mask: np.ndarray  # (height, width) uint8 local part ids, 0 outside the object's silhouette

    @property
    def name(self) -> str:
        return CLASSES[self.cls]


# ----------------------------------------------------------------------------------------------------------
# Validation and meta


def validate_spec(spec: SyntheticSpec) -> None:
    """Raise `ConfigError` naming the `embedded.<field>` key and the fix for any out-of-range value."""

    def bad(name: str, rule: str) -> ConfigError:
        value = getattr(spec, name)
        return ConfigError(
            f"embedded.{name} is {value!r}; it must be {rule}. Fix embedded.{name} in params.yaml."
        )

    for f in fields(spec):
        value = getattr(spec, f.name)
        is_float = f.type in (float, "float")
        want, kind = (numbers.Real, "a number") if is_float else (numbers.Integral, "an integer")
        if isinstance(value, bool) or not isinstance(value, want):
            raise bad(f.name, kind)
    if spec.seed < 0:
        raise bad("seed", "a non-negative integer")
    if spec.image_size < 32:
        raise bad("image_size", ">= 32 pixels (128 is the default)")
    if spec.n_train < 1:
        raise bad("n_train", ">= 1")
    if spec.n_val < 1:
        raise bad("n_val", ">= 1")
    if not 0 <= spec.n_project <= spec.n_train:
        raise bad("n_project", f"between 0 (the whole train split) and embedded.n_train ({spec.n_train})")
    if spec.min_objects < 1:
        raise bad("min_objects", ">= 1")
    if spec.min_objects > spec.max_objects:
        raise bad("min_objects", f"<= embedded.max_objects ({spec.max_objects}), or raise max_objects")
    if not spec.min_scale > 0:
        raise bad("min_scale", "> 0")
    if not spec.min_scale < spec.max_scale < float("inf"):
        raise bad("max_scale", f"> embedded.min_scale ({spec.min_scale}); 4x the minimum is the default")
    if spec.void_width < 0:
        raise bad("void_width", ">= 0 pixels (0 disables the void band)")


def _ids(split: str, n: int) -> tuple[str, ...]:
    width = max(4, len(str(n - 1)))
    return tuple(f"{split}_{i:0{width}d}" for i in range(n))


def dataset_meta(spec: SyntheticSpec) -> DatasetMeta:
    """The meta of the embedded dataset: splits train/val, plus `project` when `n_project > 0`."""
    splits = {"train": _ids("train", spec.n_train), "val": _ids("val", spec.n_val)}
    projection = "train"
    if spec.n_project > 0:
        splits["project"] = splits["train"][: spec.n_project]
        projection = "project"
    return DatasetMeta(
        name="embedded",
        classes=CLASSES,
        splits=splits,
        parts={c: PARTS[c] for c in CLASSES if c in PARTS},
        projection_split=projection,
    )


# ----------------------------------------------------------------------------------------------------------
# Shapes: each returns a (h, w) uint8 mask of local part ids (position + 1 in PARTS[class]).


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates v (down) and u (right), both in (0, 1)."""
    v = (np.arange(h, dtype=np.float32) + 0.5) / h
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    return np.meshgrid(v, u, indexing="ij")


def _house(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    v, u = _grid(h, w)
    roof_h = rng.uniform(0.35, 0.48)
    door_w = rng.uniform(0.09, 0.13)
    door_x = 0.5 + rng.uniform(-0.15, 0.15)
    mask = np.zeros((h, w), np.uint8)
    mask[(v >= roof_h) & (u >= 0.1) & (u < 0.9)] = 1  # wall
    mask[(v < roof_h) & (np.abs(u - 0.5) <= 0.5 * v / roof_h)] = 2  # roof: triangle, apex at the top
    mask[(v >= roof_h + 0.45 * (1 - roof_h)) & (np.abs(u - door_x) < door_w)] = 3  # door
    return mask


def _tree(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    v, u = _grid(h, w)
    crown_r = rng.uniform(0.32, 0.4)
    trunk_w = rng.uniform(0.08, 0.12)
    mask = np.zeros((h, w), np.uint8)
    mask[(np.abs(u - 0.5) < trunk_w) & (v >= crown_r)] = 1  # trunk
    mask[((u - 0.5) / 0.5) ** 2 + ((v - crown_r) / crown_r) ** 2 <= 1.0] = 2  # crown
    return mask


def _car(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    v, u = _grid(h, w)
    slant = 0.12 * (0.42 - v) / 0.37  # cabin narrows towards the roof
    left, right = 0.22 + rng.uniform(-0.05, 0.05) + slant, 0.78 + rng.uniform(-0.05, 0.05) - slant
    mask = np.zeros((h, w), np.uint8)
    mask[(v >= 0.38) & (v < 0.82)] = 1  # body
    mask[(v >= 0.05) & (v < 0.42) & (u >= left) & (u < right)] = 1  # cabin, part of the body
    window = (v >= 0.13) & (v < 0.38) & (u >= left + 0.05) & (u < right - 0.05) & (np.abs(u - 0.5) > 0.025)
    mask[window] = 2
    y, x = (v * h), (u * w)  # pixel units: wheels are round whatever the aspect ratio
    r = 0.2 * h
    for cx in (0.24 * w, 0.76 * w):
        mask[(x - cx) ** 2 + (y - (h - r)) ** 2 <= r * r] = 3  # wheel: one part, two discs
    return mask


def _blocks(h: int, w: int, along: int) -> np.ndarray:
    """Three blocks end/middle/end along axis 0 (tower) or 1 (bridge)."""
    v, u = _grid(h, w)
    t = v if along == 0 else u
    return np.where((t >= 1 / 3) & (t < 2 / 3), 2, 1).astype(np.uint8)


# class -> (height and width as multiples of the long side, aspect jitter, shape)
_SHAPES: dict[str, tuple[float, float, float, Callable[..., np.ndarray]]] = {
    "house": (1.0, 0.85, 0.12, _house),
    "tree": (1.0, 0.65, 0.12, _tree),
    "car": (0.55, 1.0, 0.12, _car),
    "tower": (1.0, 1 / 3, 0.0, lambda rng, h, w: _blocks(h, w, 0)),
    "bridge": (1 / 3, 1.0, 0.0, lambda rng, h, w: _blocks(h, w, 1)),
}


def _object_mask(rng: np.random.Generator, cls: int, scale: float, size: int) -> np.ndarray:
    name = CLASSES[cls]
    fh, fw, jitter, shape = _SHAPES[name]
    side = float(np.clip(BASE_SIZE * size * scale, MIN_SIDE, MAX_SIDE * size))
    if name in CONTEXT_PAIR:  # exact squares, identical in both classes for the same scale
        block = max(3, int(round(side / 3)))
        h, w = (3 * block, block) if name == "tower" else (block, 3 * block)
    else:
        aspect = np.exp(rng.uniform(-jitter, jitter))  # stretch one side, keep the long side ~ `side`
        h = max(4, int(round(side * fh * (aspect if fh < 1 else 1.0))))
        w = max(4, int(round(side * fw * (aspect if fw < 1 else 1.0))))
        h, w = min(h, size), min(w, size)
    return shape(rng, h, w)


# ----------------------------------------------------------------------------------------------------------
# Layout and rendering


def _rngs(spec: SyntheticSpec, index: int, split: str) -> tuple[np.random.Generator, np.random.Generator]:
    if split not in SPLIT_CODES:
        raise ValueError(f"split {split!r} is not generated; use one of {sorted(SPLIT_CODES)}.")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    layout, paint = np.random.SeedSequence([spec.seed, SPLIT_CODES[split], index]).spawn(2)
    return np.random.default_rng(layout), np.random.default_rng(paint)


def _layout(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[list[PlacedObject], np.ndarray]:
    """Place objects; return them and the map of the visible object (0 = background, k+1 = objects[k])."""
    size = spec.image_size
    log_lo, log_hi = np.log(spec.min_scale), np.log(spec.max_scale)
    n_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    inst = np.zeros((size, size), np.int16)
    objects: list[PlacedObject] = []
    areas: list[int] = []
    for _ in range(n_objects):
        required = len(objects) < spec.min_objects
        for attempt in range(8 if required else 3):
            cls = int(rng.integers(1, len(CLASSES)))
            scale = float(np.exp(rng.uniform(log_lo, log_hi)))
            if attempt >= 4:  # a crowded image: shrink the object to make room for the required count
                scale = max(spec.min_scale, scale / 2 ** (attempt - 3))
            mask = _object_mask(rng, cls, scale, size)
            h, w = mask.shape
            silhouette = mask > 0
            for _try in range(25):
                top = int(rng.integers(0, size - h + 1))
                left = int(rng.integers(0, size - w + 1))
                window = inst[top : top + h, left : left + w]
                covered = np.bincount(window[silhouette], minlength=len(objects) + 1)[1:]
                visible = np.bincount(inst.ravel(), minlength=len(objects) + 1)[1:] - covered
                if np.all(visible >= MIN_VISIBLE * np.asarray(areas, dtype=np.int64)):
                    break
            else:
                continue
            window[silhouette] = len(objects) + 1
            objects.append(PlacedObject(cls, scale, top, left, h, w, mask))
            areas.append(int(silhouette.sum()))
            break
    return objects, inst


def sample_objects(spec: SyntheticSpec, index: int, split: str) -> list[PlacedObject]:
    """The objects of sample `index` of `split`, as `generate_sample` draws them (fast: no textures)."""
    return _layout(spec, _rngs(spec, index, split)[0])[0]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sky over ground with a random horizon, or ground only (a view from above)."""
    ground = render_texture(rng, "ground", size, size, 1.0)
    if rng.random() < 0.25:
        return ground
    horizon = int(round(size * rng.uniform(0.25, 0.6)))
    sky = render_texture(rng, "sky", horizon, size, 1.0)
    ground[:horizon] = sky
    return ground


@dataclass(frozen=True, eq=False)
class RenderedSample:
    """A sample with the generator's record: its objects and the map of which object each pixel shows."""

    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8 class index, 255 = void
    parts: np.ndarray  # (H, W) uint8 local part index, 0 = none
    objects: list[PlacedObject]  # in drawing order (later ones on top)
    instances: np.ndarray  # (H, W) int16: 0 = background, k = objects[k - 1] (void band included)


def render_sample(spec: SyntheticSpec, index: int, split: str) -> RenderedSample:
    """Draw sample `index` of `split`; a function of (spec, split, index) only."""
    layout_rng, paint_rng = _rngs(spec, index, split)
    objects, inst = _layout(spec, layout_rng)
    size = spec.image_size
    image = _background(paint_rng, size)
    label = np.zeros((size, size), np.uint8)
    parts = np.zeros((size, size), np.uint8)
    for k, obj in enumerate(objects, start=1):
        sl = np.s_[obj.top : obj.top + obj.height, obj.left : obj.left + obj.width]
        visible = inst[sl] == k
        label[sl][visible] = obj.cls
        parts[sl][visible] = obj.mask[visible]
        for p, part in enumerate(PARTS[obj.name], start=1):
            texture = render_texture(paint_rng, PART_TEXTURES[obj.name][part], obj.height, obj.width, obj.scale)
            where = visible & (obj.mask == p)
            image[sl][where] = texture[where]
    image += paint_rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)  # sensor noise
    if spec.void_width > 0:
        footprint = 2 * spec.void_width + 1  # square: within `void_width` px of another object or background
        edge = (ndimage.maximum_filter(inst, size=footprint, mode="nearest") != inst) | (
            ndimage.minimum_filter(inst, size=footprint, mode="nearest") != inst
        )
        void = edge & (inst > 0)
        label[void] = VOID
        parts[void] = 0
    image_u8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return RenderedSample(image_u8, label, parts, objects, inst)


def generate_sample(spec: SyntheticSpec, index: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image HxWx3, label HxW, parts HxW), all uint8, of one sample: a function of (seed, split, index)."""
    sample = render_sample(spec, index, split)
    return sample.image, sample.label, sample.parts


def _samples(spec: SyntheticSpec, meta: DatasetMeta) -> Iterator[tuple]:
    for split in ("train", "val"):
        for index, sid in enumerate(meta.splits[split]):
            yield (sid, *generate_sample(spec, index, split))


def generate(spec: SyntheticSpec, root: str | Path) -> DatasetMeta:
    """Validate `spec`, then write the whole dataset at `root` in the prepared format (atomically)."""
    validate_spec(spec)
    meta = dataset_meta(spec)
    write_prepared(root, meta, _samples(spec, meta))
    return meta
