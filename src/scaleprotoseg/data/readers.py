"""Reading raw files: RGB images, single-channel label images (palette indices, never RGB), value lookup
tables and the VOC palette. Errors name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .prepared import VOID

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def lookup_table(mapping: dict[int, int], default: int = VOID) -> np.ndarray:
    """A 256-entry uint8 table: value → mapped value (default for every value not in `mapping`)."""
    table = np.full(256, default, np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table




def inside_root(root: Path, paths) -> None:
    """Refuse a file that resolves outside the dataset folder `root` (a symbolic link leaving it): the dataset
    folder is what DVC tracks, so a file outside it could change without any stage noticing."""
    top = Path(root).resolve()
    for path in paths:
        real = Path(path).resolve()
        if not real.is_relative_to(top):
            raise DataError(f"{path} is a symbolic link to {real}, outside the dataset folder {root}; copy the file "
                            "into the dataset (or move the whole dataset there and link the dataset folder itself).")


def voc_palette() -> np.ndarray:
    """The 256-colour VOC palette (bit-interleaved class index → RGB), flattened for `Image.putpalette`."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.ravel()


def read_text(path: Path) -> str:
    """A text file (split list, class names, classes.json) as UTF-8 (a byte-order mark is skipped)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                        "save it as UTF-8.") from None


_BOMB = ("is larger than the decompression limit of {:,} pixels (a guard against decompression bombs); if the "
         "image is genuine, raise data_sources.<dataset>.max_image_pixels.")
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit (and 32-bit integer) single-channel images


def _open(path: Path, what: str, read):
    """`read(img)` of the image at `path`, refused above the decompression limit, every error naming the file."""
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1× and 2× its limit: refuse from 1×
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return read(img)
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path} " + _BOMB.format(Image.MAX_IMAGE_PIXELS)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable {what} ({exc}).") from exc


def upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF orientation says (how viewers and annotation tools show a camera photo), so an
    image and a mask drawn over it on screen line up; an image without that tag is returned as it is."""
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8, upright (EXIF orientation applied). A 16-bit (or 32-bit integer) grayscale image is scaled to 8 bits (v × 255 / 65535, or by the
    32-bit range when its values exceed 16 bits), not clipped — microscopy and EM images are often 16-bit."""
    img = upright(img)
    if img.mode in _HIGH_DEPTH:
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) <= 65535 else 2.0**32 - 1
        grey = np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise DataError("a floating-point image has no fixed range to map to 8 bits; save it as 8- or 16-bit.")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: Path) -> np.ndarray:
    """An RGB image; one over `Image.MAX_IMAGE_PIXELS` (data_sources.<d>.max_image_pixels) is refused."""
    try:
        return _open(path, "image", _to_rgb)
    except DataError as exc:
        if str(exc).startswith("a floating-point"):
            raise DataError(f"{path}: {exc}") from None
        raise


def _index(path: Path):
    def read(img):
        img.load()
        if img.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: a label map must be single-channel (grayscale or palette), got mode {img.mode}.")
        return np.asarray(upright(img))  # a mask with an EXIF orientation is turned like its image
    return read


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel label image as its stored values: grayscale values or palette **indices**. Refused, like
    an image, above the decompression limit."""
    arr = _open(path, "label image", _index(path))
    if arr.max(initial=0) > 255:
        raise DataError(f"{path}: label values up to {int(arr.max())} do not fit the prepared uint8 format.")
    return arr.astype(np.uint8)
