"""Shared fixtures: a tiny prepared dataset written by hand and a tiny, fast run configuration."""

from __future__ import annotations

import numpy as np
import pytest

from scaleprotoseg.config import load_config, read_params
from scaleprotoseg.data.prepared import DatasetMeta, write_prepared
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.smoke import TINY

CLASSES = ("background", "square", "stripe")


def tiny_samples(n: int, size: int = 40, seed: int = 0):
    """Images whose label is recoverable from colour: a bright square (1) and a dark stripe (2)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
        lab = np.zeros((size, size), np.uint8)
        y, x = rng.integers(2, size // 2, 2)
        s = int(rng.integers(6, size // 2))
        img[y : y + s, x : x + s] = (230, 40, 40)
        lab[y : y + s, x : x + s] = 1
        c = int(rng.integers(0, size - 4))
        img[:, c : c + 4] = (20, 20, 200)
        lab[:, c : c + 4] = 2
        lab[y - 1, x : x + s] = 255  # a void line, like Pascal's border
        parts = (lab == 1).astype(np.uint8)
        yield f"img{i:03d}", img, lab, parts


@pytest.fixture()
def tiny_dataset(tmp_path):
    meta = DatasetMeta(
        name="tiny",
        classes=CLASSES,
        splits={"train": tuple(f"img{i:03d}" for i in range(6)), "val": tuple(f"img{i:03d}" for i in range(6, 9))},
        parts={"square": ("whole",)},
    )
    root = tmp_path / "prepared"
    write_prepared(root, meta, tiny_samples(9))
    return root


TINY_OVERRIDES = TINY  # the tiny run configuration lives with the smoke settings (stages/smoke.py)


@pytest.fixture()
def params():
    return read_params(repo_root() / "params.yaml")


@pytest.fixture()
def tiny_cfg(params):
    return load_config(params, overrides=TINY_OVERRIDES)
