"""Reading and carrying the artifacts that stages hand each other: the projection's records (provenance
table, source patches) and which checkpoint a method is evaluated with. No stage logic here, so every
stage that reads these artifacts can import it without depending on another stage's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path


def provenance(project_dir: Path) -> pd.DataFrame:
    """The provenance table written by the projection (empty for deeplab)."""
    path = Path(project_dir) / "provenance.csv"
    return pd.read_csv(path, index_col=0) if path.is_file() else pd.DataFrame()


PROJECTION_RECORDS = ("provenance.csv", "patches.npz")


def read_patches(project_dir: Path):
    """(patches, boxes, names) saved by the projection, or None (deeplab)."""
    path = Path(project_dir) / "patches.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["patches"], z["boxes"], list(z["names"])


def copy_projection_records(src: Path, dst: Path) -> None:
    """Carry the projection's provenance and patches along with a model derived from it."""
    for name in PROJECTION_RECORDS:
        if (Path(src) / name).is_file():
            with atomic_path(Path(dst) / name) as tmp:
                tmp.write_bytes((Path(src) / name).read_bytes())


def final_checkpoint(train_dir: Path, project_dir: Path) -> Path:
    """The model a method is evaluated with: the projected one when projection produced it."""
    projected = Path(project_dir) / "model.pt"
    return projected if projected.is_file() else Path(train_dir) / "model.pt"


def read_curves(dvclive_dir: Path) -> dict[str, pd.DataFrame]:
    """DVCLive's step-wise TSV files as DataFrames, keyed by metric name (e.g. train/loss)."""
    base = Path(dvclive_dir) / "plots" / "metrics"
    return {str(p.relative_to(base).with_suffix("")): pd.read_csv(p, sep="\t") for p in sorted(base.rglob("*.tsv"))}


def curves_table(dvclive_dir: Path) -> pd.DataFrame:
    """The DVCLive curves as one table: a column per metric (e.g. `joint/loss`, `val/miou`), a row per step."""
    curves = read_curves(dvclive_dir)
    if not curves:
        return pd.DataFrame()
    cols = {name: df.set_index("step")[df.columns[-1]] for name, df in curves.items()}
    return pd.DataFrame(cols).sort_index()
