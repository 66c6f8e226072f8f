"""What a stage notebook shows of saved artifacts: figures and tables drawn or written by the stage.

Everything returns an object the notebook displays as a cell's value, whatever matplotlib's backend (`make`
and `dvc repro` run the kernels with MPLBACKEND=Agg, under which a figure displays nothing by itself): a
figure is rendered to a PNG image here.
"""

from __future__ import annotations

import io
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


def figure(fig):
    """A matplotlib figure as a PNG image for the notebook (closed afterwards)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")


def curves(report_dir: str | Path, title: str):
    """A training stage's DVCLive curves: one panel per quantity (loss, validation mIoU), each phase a segment
    of one curve over the global step (the phase in the legend), or a note when there are none (an imported
    released model trains nothing)."""
    import matplotlib.pyplot as plt

    from ..artifacts import curves_table

    table = curves_table(Path(report_dir) / "dvclive").filter(regex="loss|miou")
    if table.empty:
        from IPython.display import Markdown

        return Markdown("*No training curves: this model was imported, not trained.*")
    quantities = list(dict.fromkeys(c.split("/")[-1] for c in table.columns))
    fig, axes = plt.subplots(len(quantities), 1, figsize=(8, 2.4 * len(quantities)), squeeze=False, sharex=True)
    for ax, q in zip(axes[:, 0], quantities):
        for col in (c for c in table.columns if c.split("/")[-1] == q):
            series = table[col].dropna()
            ax.plot(series.index, series.to_numpy(), marker="." if len(series) < 30 else None, label=col.split("/")[0])
        ax.set_ylabel({"loss": "training loss", "miou": "validation mIoU (%)"}.get(q, q))
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("mini-batch step (across phases)")
    fig.suptitle(title)
    return figure(fig)
