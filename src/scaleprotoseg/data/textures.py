"""Textures of the embedded dataset: photographs and textures that ship inside scikit-image, tinted
(grayscale sources) or used as they are (colour sources), cropped and rescaled per object part."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize

from ..errors import DataError


@dataclass(frozen=True)
class Texture:
    """A texture source: a bundled scikit-image picture, tinted (grayscale) or used as is (colour)."""

    file: str  # file name in skimage's data folder
    tints: tuple[tuple[float, float, float], ...] = ()  # empty: colour source used as is
    contrast: float = 0.35  # tinted sources: shade = 1 + contrast * standardised gray value
    zoom: float = 0.5  # output pixels per source pixel at scale 1
    rows: tuple[float, float] = (0.0, 1.0)  # vertical band of the source that crops come from
    transpose: bool = False  # swap the source's axes (brick.png's courses run vertically)


TEXTURES: dict[str, Texture] = {
    # Backgrounds only.
    "sky": Texture("moon.png", ((0.60, 0.74, 0.93), (0.72, 0.80, 0.90), (0.55, 0.66, 0.82)), 0.4, 0.5),
    "ground": Texture("gravel.png", ((0.76, 0.66, 0.47), (0.60, 0.56, 0.52), (0.66, 0.62, 0.46)), 0.4, 0.4),
    # Object parts.
    "brick": Texture("brick.png", ((0.86, 0.46, 0.34), (0.92, 0.85, 0.70)), 0.35, 0.3, transpose=True),
    "tiles": Texture("coins.png", ((0.62, 0.20, 0.15), (0.36, 0.38, 0.48)), 0.45, 0.4),
    "wood": Texture("coffee.png", zoom=0.6, rows=(0.0, 0.35)),
    "bark": Texture("chelsea.png", ((0.48, 0.32, 0.18), (0.40, 0.30, 0.22)), 0.5, 0.7),
    "foliage": Texture("grass.png", ((0.20, 0.50, 0.16), (0.28, 0.46, 0.12), (0.16, 0.42, 0.24)), 0.5, 0.55),
    "paint": Texture(
        "clock_motion.png",
        ((0.88, 0.14, 0.12), (0.14, 0.30, 0.85), (0.95, 0.80, 0.12), (0.92, 0.92, 0.95), (0.10, 0.55, 0.55)),
        0.35,
        0.5,
    ),
    "glass": Texture("rocket.jpg", zoom=0.7, rows=(0.0, 0.5)),
    "rubber": Texture("hubble_deep_field.jpg", ((0.20, 0.20, 0.22),), 0.5, 0.5),
    "stone_end": Texture("ihc.png", zoom=0.45),
    "stone_middle": Texture("text.png", ((0.40, 0.43, 0.52), (0.47, 0.45, 0.42)), 0.6, 0.55),
}
BACKGROUND_TEXTURES = ("sky", "ground")
PART_TEXTURES: dict[str, dict[str, str]] = {
    "house": {"wall": "brick", "roof": "tiles", "door": "wood"},
    "tree": {"trunk": "bark", "crown": "foliage"},
    "car": {"body": "paint", "window": "glass", "wheel": "rubber"},
    "tower": {"end": "stone_end", "middle": "stone_middle"},
    "bridge": {"end": "stone_end", "middle": "stone_middle"},
}


def texture_path(name: str) -> Path:
    """Path of a texture's source picture inside scikit-image's own data folder (never a download cache)."""
    import skimage

    return Path(skimage.__file__).parent / "data" / TEXTURES[name].file


@cache
def _source(name: str) -> np.ndarray:
    """Float32 source picture: standardised gray (H, W) for tinted textures, RGB in [0, 1] otherwise."""
    tex, path = TEXTURES[name], texture_path(name)
    if not path.is_file():
        raise DataError(
            f"Texture {name!r} needs {path}, which should ship inside scikit-image; reinstall scikit-image "
            "(see environment.yml)."
        )
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if tex.tints else "RGB"), dtype=np.float32) / 255.0
    lo, hi = (int(round(f * arr.shape[0])) for f in tex.rows)
    arr = arr[lo:hi]
    if tex.transpose:
        arr = arr.swapaxes(0, 1)
    if tex.tints:
        arr = (arr - arr.mean()) / max(float(arr.std()), 1e-3)
    arr.setflags(write=False)
    return arr


def render_texture(rng: np.random.Generator, name: str, h: int, w: int, scale: float) -> np.ndarray:
    """A (h, w, 3) float32 patch of a texture: random crop, rescale, flip, tint and brightness jitter."""
    tex, src = TEXTURES[name], _source(name)
    zoom = tex.zoom * np.sqrt(scale) * np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    ch = min(src.shape[0], max(2, int(np.ceil(h / zoom))))
    cw = min(src.shape[1], max(2, int(np.ceil(w / zoom))))
    y0 = int(rng.integers(0, src.shape[0] - ch + 1))
    x0 = int(rng.integers(0, src.shape[1] - cw + 1))
    crop = src[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    patch = resize(crop, (h, w), order=1, anti_aliasing=(ch > h or cw > w), preserve_range=True)
    brightness = rng.uniform(0.85, 1.15)
    if tex.tints:
        tint = np.asarray(tex.tints[int(rng.integers(len(tex.tints)))], dtype=np.float32)
        tint = tint * rng.uniform(0.92, 1.08, size=3)
        shade = np.clip(1.0 + tex.contrast * patch, 0.15, 2.0)
        rgb = shade[..., None] * tint * brightness
    else:
        rgb = patch * brightness
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
