"""What a stage notebook shows of saved artifacts: figures and tables drawn or written by the stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def read_table_if(path: str | Path):
    """A saved CSV table, or a note that this method has none."""
    if Path(path).is_file():
        return pd.read_csv(path, index_col=0)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show_if(path: str | Path):
    """Display a saved PNG, or say that this method has no such figure."""
    if Path(path).is_file():
        return show(path)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show(path: str | Path):
    """Display a saved PNG in a notebook (figures are drawn from saved artifacts)."""
    from IPython.display import Image

    return Image(filename=str(path))
