"""Stage 10, prepare: the embedded dataset generated from its seed, or a raw dataset read in its download
layout (`data/sources.py`) and converted into the prepared format; a preview grid and class statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage.color import label2rgb

from ..atomic import atomic_path
from ..config import data_source, embedded_spec
from ..data.prepared import VOID, PreparedDataset, read_meta
from ..data.synthetic import generate
from ..errors import ConfigError
from .layout import resolve


def synthetic_spec(params: dict):
    """The embedded generator's settings (`embedded` section, checked by config)."""
    return embedded_spec(params)


def source_settings(params: dict, dataset: str):
    """What the preparation of `dataset` reads its settings from: the embedded generator's (`embedded`) or the raw
    source's (`data_sources.<dataset>`: folder, workers, …)."""
    return synthetic_spec(params) if dataset == "embedded" else data_source(params, dataset)


def prepare_dataset(params: dict, dataset: str, root: Path, progress: bool = False):
    """Write the prepared dataset for `dataset` under `root` (atomically); return its meta.

    Real datasets are read from `data_sources.<dataset>.root` in their original layout (never modified)."""
    if dataset == "embedded":
        return generate(synthetic_spec(params), root)
    from ..data.convert import prepare_source
    from ..data.sources import SCANNERS

    if dataset not in SCANNERS or dataset not in (params.get("data_sources") or {}):
        raise ConfigError(
            f"No preparation for dataset {dataset!r}: readers exist for {sorted(SCANNERS)} (data_sources.<name> "
            "in params.yaml) and the embedded dataset; a new dataset can use the folder reader (README)."
        )
    spec = data_source(params, dataset)
    raw = resolve(spec.root)
    if not raw.is_dir():
        raise ConfigError(f"data_sources.{dataset}.root: {raw} does not exist; put the dataset there in its original "
                          "layout (README, 'Raw datasets') or point the key at it.")
    if spec.max_image_pixels is not None:  # Pillow's decompression-bomb guard, for genuinely huge images
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = spec.max_image_pixels
    scan = SCANNERS[dataset]
    source = scan(raw, seed=spec.seed) if spec.seed is not None else scan(raw)
    res = prepare_source(source, root, workers=spec.workers, skip_corrupt=spec.skip_corrupt, progress=progress)
    print(f"{dataset}: converted {res.converted} sample(s), kept {res.reused} unchanged since the last preparation.")
    if res.skipped:
        print(f"skipped {len(res.skipped)} unreadable sample(s) (data_sources.{dataset}.skip_corrupt): {res.skipped[:20]}")
    for note in source.notes:  # what the reader had to assume (e.g. a names file not found)
        print(f"note: {note}")
    return res.meta


# Each tile of the preview at most this many pixels a side: at Cityscapes' 1024 × 2048 the full-size grid of 6
# samples was a 37-megapixel image, 48 MB in the executed notebook.
PREVIEW_SIDE = 512


def dataset_preview(root: Path, split: str = "train", n: int = 6, seed: int = 0) -> Image.Image:
    """`n` seeded samples side by side: the images, their class masks (void black) and, when the dataset has
    parts, the part masks (index of the part within its class; white where none); each tile shrunk to at most
    `PREVIEW_SIDE` a side (the image bilinear, the masks nearest, so their colours stay theirs). Drawn with
    scikit-image, not the figure module, so that editing figures never re-runs data preparation."""
    ds = PreparedDataset(root, split)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))

    def shrink(a, resample):
        scale = PREVIEW_SIDE / max(a.shape[:2])
        if scale >= 1:
            return a
        size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))
        return np.asarray(Image.fromarray(a).resize(size, resample))

    rows = [[shrink(ds.image(i), Image.BILINEAR) for i in idx],
            [shrink((255 * label2rgb(ds.label(i), bg_label=VOID, bg_color=(0, 0, 0))).astype(np.uint8), Image.NEAREST)
             for i in idx]]
    if ds.meta.has_parts:
        rows.append([shrink((255 * label2rgb(ds.parts(i), bg_label=0, bg_color=(1, 1, 1))).astype(np.uint8),
                            Image.NEAREST) for i in idx])
    h = max(a.shape[0] for a in rows[0])

    def fit(a):  # pad to a common height, and a white gutter
        return np.pad(a, ((0, h - a.shape[0]), (0, 4), (0, 0)), constant_values=255)

    grid = np.concatenate([np.concatenate([fit(a) for a in row], 1) for row in rows], 0)
    return Image.fromarray(grid)


def save_image(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def dataset_summary(root: Path) -> pd.DataFrame:
    """Per split and class: images containing the class and its share of non-void pixels."""
    meta = read_meta(root)
    rows = []
    for split in meta.splits:
        ds = PreparedDataset(root, split)
        counts = np.zeros(meta.num_classes, np.int64)
        present = np.zeros(meta.num_classes, np.int64)
        for i in range(len(ds)):
            c = np.bincount(ds.label(i).ravel(), minlength=256)[: meta.num_classes]
            counts += c
            present += c > 0
        total = counts.sum()
        for k, name in enumerate(meta.classes):
            rows.append({"split": split, "class": name, "images": int(present[k]), "pixel_%": round(100 * counts[k] / max(total, 1), 2)})
    return pd.DataFrame(rows).pivot(index="class", columns="split").reindex(meta.classes)
