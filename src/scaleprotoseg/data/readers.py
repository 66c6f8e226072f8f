"""Reading raw files: RGB images, single-channel label images (palette indices, never RGB), value lookup
tables and the VOC palette. Errors name the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .prepared import VOID

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def lookup_table(mapping: dict[int, int], default: int = VOID) -> np.ndarray:
    """A 256-entry uint8 table: value → mapped value (default for every value not in `mapping`)."""
    table = np.full(256, default, np.uint8)
    for k, v in mapping.items():
        table[k] = v
    return table




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


def read_image(path: Path) -> np.ndarray:
    """An RGB image; one over `Image.MAX_IMAGE_PIXELS` (data_sources.<d>.max_image_pixels) is refused."""
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1× and 2× its limit: refuse from 1×
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as exc:
        raise DataError(f"{path} is missing.") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path} is larger than the decompression limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a guard "
                        "against decompression bombs); if the image is genuine, raise data_sources.<dataset>."
                        "max_image_pixels.") from exc
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
