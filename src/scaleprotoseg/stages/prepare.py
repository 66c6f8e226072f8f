"""Stage 10, prepare: the embedded dataset generated from its seed, or a raw dataset read in its download
layout (`data/sources.py`) and converted into the prepared format; a preview grid and class statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..data.prepared import PreparedDataset, read_meta
from ..data.synthetic import SyntheticSpec, generate
from ..errors import ConfigError
from .context import resolve


def synthetic_spec(params: dict) -> SyntheticSpec:
    section = params.get("embedded")
    if not isinstance(section, dict):
        raise ConfigError("params.yaml has no 'embedded' section (the embedded dataset's generator settings).")
    valid = set(SyntheticSpec.__dataclass_fields__)
    unknown = set(section) - valid
    if unknown:
        raise ConfigError(f"embedded: unknown key(s) {sorted(unknown)}; valid keys: {sorted(valid)}.")
    for key, value in section.items():
        expected = type(getattr(SyntheticSpec(), key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (expected is int and not isinstance(value, int)):
            raise ConfigError(f"embedded.{key} must be {'an integer' if expected is int else 'a number'}, got {value!r}.")
    return SyntheticSpec(**section)


def prepare_dataset(params: dict, dataset: str, root: Path, progress: bool = False):
    """Write the prepared dataset for `dataset` under `root` (atomically); return its meta.

    Real datasets are read from `data_sources.<dataset>.root` in their original layout (never modified)."""
    if dataset == "embedded":
        return generate(synthetic_spec(params), root)
    from ..data.sources import SCANNERS, prepare_source

    spec = (params.get("data_sources") or {}).get(dataset)
    if dataset not in SCANNERS or not isinstance(spec, dict):
        raise ConfigError(
            f"No preparation for dataset {dataset!r}: readers exist for {sorted(SCANNERS)} (data_sources.<name> "
            "in params.yaml) and the embedded dataset; a new dataset can use the folder reader (README)."
        )
    raw = resolve(spec.get("root", f"data/{dataset}"))
    if not raw.is_dir():
        raise ConfigError(f"data_sources.{dataset}.root: {raw} does not exist; put the dataset there in its original "
                          "layout (README, 'Raw datasets') or point the key at it.")
    scan = SCANNERS[dataset]
    source = scan(raw, seed=int(spec["seed"])) if "seed" in spec else scan(raw)
    res = prepare_source(source, root, workers=int(spec.get("workers", 2)),
                         skip_corrupt=bool(spec.get("skip_corrupt", False)), progress=progress)
    print(f"{dataset}: converted {res.converted} sample(s), kept {res.reused} unchanged since the last preparation.")
    if res.skipped:
        print(f"skipped {len(res.skipped)} unreadable sample(s) (data_sources.{dataset}.skip_corrupt): {res.skipped[:20]}")
    for note in source.notes:  # what the reader had to assume (e.g. a names file not found)
        print(f"note: {note}")
    return res.meta


def dataset_preview(root: Path, split: str = "train", n: int = 6, seed: int = 0):
    """A grid of `n` seeded samples with their class and part masks."""
    ds = PreparedDataset(root, split)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    images = [ds.image(i) for i in idx]
    labels = [ds.label(i) for i in idx]
    parts = [ds.parts(i) for i in idx] if ds.meta.has_parts else None
    return plots.dataset_grid(images, labels, parts, ds.meta.classes, titles=[ds.ids[i] for i in idx])


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
