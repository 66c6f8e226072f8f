"""Every figure of the reports: plain data in, a matplotlib Figure out; only `save_figure` writes. Figures
are laid out by hand in inches (`_grid`), with panels, gaps and margins sized from the measured width of
their text, so with 2 or 150 classes no label runs into another or off the canvas, quickly at any size."""

from __future__ import annotations

import textwrap
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.collections import PatchCollection, PolyCollection
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.textpath import TextToPath

VOID_COLOUR = (0.0, 0.0, 0.0)
_PAIR = ((0.84, 0.15, 0.16), (0.12, 0.47, 0.71), (0.85, 0.85, 0.85), VOID_COLOUR)  # failure: class, other, rest, void
_TTP = TextToPath()


def class_palette(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1] (background first, a neutral grey); beyond 20 classes, hues at three
    lightness levels in a fixed shuffled order, so that neighbouring class ids differ."""
    if n <= 20:
        pal = np.array(sns.color_palette("tab10" if n <= 10 else "tab20", n_colors=max(n, 1))[:n], dtype=float)
    else:
        per = -(-n // 3)
        pal = np.concatenate([sns.husl_palette(per, h=0.01 + 0.33 * i / per, s=0.9, l=lum)
                              for i, lum in enumerate((0.45, 0.65, 0.82))])[:n][np.random.default_rng(0).permutation(n)]
    if n:
        pal[0] = (0.75, 0.75, 0.75)
    return pal


def colourise(label: np.ndarray, n_classes: int, void: int = 255) -> np.ndarray:
    """Label map → RGB image; void pixels black."""
    pal = np.vstack([class_palette(n_classes), np.zeros((256 - n_classes, 3))])
    rgb = pal[np.clip(label, 0, 255)]
    rgb[label == void] = VOID_COLOUR
    return rgb


# Layout helpers; every size is in inches.
@lru_cache(maxsize=8192)
def _tw(text, fs: float) -> float:
    """Width of the widest line of `text` at font size `fs`."""
    return max(_TTP.get_text_width_height_descent(s, FontProperties(size=fs), False)[0] for s in str(text).split("\n")) / 72


def _th(text, fs: float) -> float:
    """Height of `text`: its lines at matplotlib's 1.2 line spacing."""
    return fs * (1.2 * str(text).count("\n") + 1.15) / 72


def _wrap(text, width: float, fs: float) -> str:
    """`text` re-wrapped (its line breaks kept) so that no line is wider than `width` where words allow."""
    chars = max(int(width * 72 / (0.5 * fs)), 6)
    while True:
        out = "\n".join(textwrap.fill(s, chars, break_on_hyphens=False) or s for s in str(text).split("\n"))
        if chars <= 6 or _tw(out, fs) <= width:
            return out
        chars -= 2


def _legend_shape(labels, fs: float, max_w: float = 0, max_h: float = 0, ncol: int = 0):
    """(columns, width, height) of a frameless legend of `labels`, as wide as `max_w` or as tall as `max_h` allow."""
    colw, pitch = max(_tw(s, fs) for s in labels) + fs * 3.3 / 72, _th("x", fs) * 1.45  # + handle, pads; row pitch
    ncol = ncol or int(max(1, min(len(labels), max_w // colw) if max_w else np.ceil(len(labels) / max(1, max_h // pitch))))
    return ncol, ncol * colw, np.ceil(len(labels) / ncol) * pitch + 0.1


def _legend_at(fig, ax, handles, ncol, fs, above=False):
    """A frameless figure legend above the top-left panel `ax` or beside the top-right one."""
    pos, W = ax.get_position(), fig.get_size_inches()[0]
    loc, xy = ("lower left", (pos.x0, pos.y1 + 0.03)) if above else ("upper left", (pos.x1 + 0.15 / W, pos.y1))
    fig.legend(handles=handles, ncol=ncol, fontsize=fs, frameon=False, borderaxespad=0, borderpad=0, loc=loc, bbox_to_anchor=xy)


def _grid(nrow, ncol, w, h, left=0.3, right=0.2, top=0.15, bottom=0.3, wgap=0.3, hgap=0.3, title=None, fs=12):
    """A figure of an nrow × ncol grid of w × h panels with these margins and gaps, `title` (wrapped to the
    figure's width) on top; returns (fig, axes array). `top` is the room above the panels, title apart."""
    W = left + ncol * w + (ncol - 1) * wgap + right
    title = _wrap(title, W - 0.3, fs) if title else None
    top += _th(title, fs) + 0.15 if title else 0  # the title's band
    H = top + nrow * h + (nrow - 1) * hgap + bottom
    fig = plt.figure(figsize=(W, H))
    if title:
        fig.suptitle(title, y=1 - 0.1 / H, va="top", fontsize=fs)
    axes = np.empty((nrow, ncol), dtype=object)
    for r, c in np.ndindex(nrow, ncol):
        axes[r, c] = fig.add_axes(((left + c * (w + wgap)) / W, (H - top - (r + 1) * h - r * hgap) / H, w / W, h / H))
    return fig, axes


def _bars(ax, x0, x1, y0, y1, colour, label: str):
    """Rectangles [x0, x1] × [y0, y1] (arrays) as one collection, so that hundreds draw fast; NaN ones skipped."""
    box = np.stack(np.broadcast_arrays(*(np.asarray(v, float) for v in (x0, x1, y0, y1))), -1)
    box = box[np.isfinite(box).all(1)]
    ax.add_collection(PolyCollection(box[:, [[0, 2], [1, 2], [1, 3], [0, 3]]], facecolors=[colour], label=label))


def _colorbar(fig, im, ax, label: str, gap: float, width: float, height: float = 1e9, fs: float = 8):
    """A colour bar `gap` right of `ax`, top-aligned with it and at most `height` tall; its label wrapped to fit."""
    pos, (W, H) = ax.get_position(), fig.get_size_inches()
    h = min(height / H, pos.height)
    cb = fig.colorbar(im, cax=fig.add_axes((pos.x1 + gap / W, pos.y1 - h, width / W, h)))
    cb.set_label(_wrap(label, h * H, fs), fontsize=fs)
    cb.ax.tick_params(labelsize=fs - 1)


def confusion_figure(cm: np.ndarray, class_names, title: str = "Confusion matrix (row-normalised, %)"):
    """Row-normalised confusion matrix; cells shrink with the number of classes (the matrix stays within
    ~14 in), numbers are printed where they fit and, with many classes, every n-th class is labelled."""
    cm, K = np.asarray(cm, dtype=float), len(class_names)
    if cm.shape != (K, K):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match the {K} class names; pass a (K, K) matrix")
    norm = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1e-12)  # a class absent from the ground truth: 0
    cell = max(min(9.0 / K, 0.7), 2.0 / K, 0.09)
    fs = float(np.clip(cell * 72 * 0.7, 5, 9))
    step = int(np.ceil(fs * 1.3 / (cell * 72)))
    shown = [str(n) if i % step == 0 else "" for i, n in enumerate(class_names)]
    lw = max(_tw(n, fs) for n in shown)
    rot = 0 if lw < 0.85 * cell * step else 90
    fig, axes = _grid(1, 1, K * cell, K * cell, left=lw + 0.45, right=1.0, bottom=(lw if rot else _th("x", fs)) + 0.5,
                      title=title)
    ax = axes[0, 0]
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    if cell * 72 >= 16:
        for (i, j), v in np.ndenumerate(norm):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=min(8.0, cell * 72 / 2.6),
                    color="white" if v > 60 else "black")
    ax.set_xticks(range(K), shown, rotation=rot, fontsize=fs)
    ax.set_yticks(range(K), shown, fontsize=fs)
    ax.set(xlabel="predicted class", ylabel="ground-truth class")
    _colorbar(fig, im, ax, "% of ground-truth pixels", 0.15, 0.15)
    return fig


def predictions_figure(images, labels, preds, class_names, titles=None):
    """Columns: image, ground truth, prediction — one row per example; a legend of the classes present."""
    n, K, pal = len(images), len(class_names), class_palette(len(class_names))
    H0, W0 = np.asarray(images[0]).shape[:2]
    pw, ph = 2.4, float(np.clip(2.4 * H0 / max(W0, 1), 1.0, 3.8))
    ylabels = [_wrap(titles[i] if titles else f"example {i}", ph, 8) for i in range(n)]
    values = np.unique(np.concatenate([np.ravel(a) for a in (*labels, *preds)]))
    handles = [Patch(color=pal[v], label=str(class_names[v])) for v in values if v < K]
    handles += [Patch(color=VOID_COLOUR, label="void")] if (values >= K).any() else []
    ncol, lw, _ = _legend_shape([h.get_label() for h in handles], 8, max_h=n * ph + (n - 1) * 0.15 + 0.1)
    fig, axes = _grid(n, 3, pw, ph, left=max(_th(s, 8) for s in ylabels) + 0.15, right=lw + 0.35, top=0.35, bottom=0.15,
                      wgap=0.1, hgap=0.15)
    for i in range(n):
        for ax, im in zip(axes[i], (images[i], colourise(labels[i], K), colourise(preds[i], K))):
            ax.imshow(im, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
        axes[i, 0].set_ylabel(ylabels[i], fontsize=8)
    for ax, t in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(t, fontsize=10)
    _legend_at(fig, axes[0, 2], handles, ncol, 8)
    return fig


def per_class_iou_figure(table, title="Per-class IoU (%)"):
    """`table`: DataFrame with index = class names and one column per method; grouped bars, wrapped over
    rows of at most ~14 in when there are many classes."""
    K, M = table.shape
    per = max(0.24, 0.07 * M + 0.08)  # inches per class
    nrow = int(np.ceil(K / max(int(14 // per), 1)))
    per_row, fs = int(np.ceil(K / nrow)), 8 if K <= 40 else 7
    lw, w = max(_tw(str(n), fs) for n in table.index), max(per_row * per, 2.5)
    rot = 0 if lw < 0.9 * w / per_row else 90
    band = (lw if rot else _th("x", fs)) + 0.15
    ncol, _, leg_h = _legend_shape(list(map(str, table.columns)), 8, max_w=w + 0.6)
    fig, axes = _grid(nrow, 1, w, 2.2, left=0.7, top=leg_h + 0.1, bottom=band, hgap=band + 0.15, title=title)
    colours, bw = sns.color_palette("tab10", M), min(0.8 / M, 0.3)
    for r, ax in enumerate(axes[:, 0]):
        chunk = table.iloc[r * per_row : (r + 1) * per_row]
        for j, col in enumerate(table.columns):
            x = np.arange(len(chunk)) + (j - (M - 1) / 2) * bw
            _bars(ax, x - bw / 2, x + bw / 2, 0, chunk[col].to_numpy(dtype=float), colours[j], str(col))
        ax.set_xticks(range(len(chunk)), list(map(str, chunk.index)), rotation=rot, fontsize=fs)
        ax.set(xlim=(-0.6, per_row - 0.4), ylim=(0, 100), ylabel="IoU (%)")
    _legend_at(fig, axes[0, 0], axes[0, 0].get_legend_handles_labels()[0], ncol, 8, above=True)
    return fig


def curves_figure(curves: dict, title="Training curves"):
    """`curves`: {method: {"<phase>/<quantity>": DataFrame(step, value)}} → one panel per quantity (loss,
    learning rate, validation mIoU); colour = method, line style = training phase, over the global step."""
    panels = sorted({k.split("/")[-1] for c in curves.values() for k in c}, key=lambda q: (q != "loss", q))
    if not panels:
        return message_figure("No training curves recorded.")
    names = {"loss": "training loss", "lr": "learning rate (first group)", "miou": "validation mIoU (%)"}
    colours = dict(zip(curves, sns.color_palette("tab10", len(curves))))
    phases = [p for p in dict.fromkeys(k.split("/")[0] for c in curves.values() for k in sorted(c, key=lambda k: float(
        c[k]["step"].min()))) if p not in ("train", "val")]
    styles = dict(zip(phases, ["--", ":", "-.", (0, (6, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (10, 3))] * 3))
    handles = [Line2D([], [], color=colours[m], label=m) for m in curves]
    handles += [Line2D([], [], color="grey", ls=styles[p], label=f"phase: {p}") for p in phases]
    ncol, lw, _ = _legend_shape([h.get_label() for h in handles], 8, max_h=3.2)
    fig, axes = _grid(1, len(panels), 3.8, 2.6, left=0.85, right=lw + 0.4, top=_th("x", 10) + 0.15, bottom=0.6,
                      wgap=0.95, title=title)
    for ax, q in zip(axes[0], panels):
        ys = []
        for method, c in curves.items():
            for key, df in ((k, d) for k, d in c.items() if k.split("/")[-1] == q):
                ax.plot(df["step"], df[df.columns[-1]], color=colours[method], ls=styles.get(key.split("/")[0], "-"),
                        marker="o" if len(df) < 12 else None, ms=3)
                ys += list(df[df.columns[-1]])
        ax.set_title(names.get(q, q), fontsize=10)
        ax.set_xlabel("mini-batch step (across phases)", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        v = np.asarray([y for y in ys if np.isfinite(y)] or [0.0])  # losses orders of magnitude apart: log scale
        ax.set_yscale("log" if q == "lr" or (q == "loss" and v.min() > 0 and v.max() > 100 * v.min()) else "linear")
    _legend_at(fig, axes[0, -1], handles, ncol, 8)
    return fig


def save_figure(fig, path) -> None:
    """Save atomically as PNG (the only file-writing helper here) and close the figure. Text is data, drawn as
    written, never as mathtext: a class named 'cost $5' or '$x$' is shown literally (nothing renders earlier)."""
    from .atomic import atomic_path

    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
    with atomic_path(path) as tmp, plt.rc_context({"text.parse_math": False}):  # and ticks made while drawing
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def prototype_gallery(patches: np.ndarray, boxes: np.ndarray, names, title: str = "Prototypes: source patches",
                      max_classes: int = 12, max_per_class: int = 12, used=None, group_weights=None):
    """One row per class, its prototypes by scale: the image patch each was projected from, with the
    high-activation box; names are '<class>/s<scale>/<m>'. `used` (bool per prototype) greys out and marks
    unused ones; `group_weights` (a label per prototype, e.g. 'g0:0.42 g2:0.31') says which groups use each
    and how much. Beyond `max_classes` classes or `max_per_class` prototypes a class (taken in turn from each
    scale), the title says what is shown. One mosaic image: quick at any size."""
    P, patches = len(names), np.asarray(patches)
    for what, v in (("patches", patches), ("boxes", boxes), ("used", used), ("group_weights", group_weights)):
        if v is not None and len(v) != P:
            raise ValueError(f"prototype_gallery: {what} has {len(v)} entries for {P} prototype names")
    if any(str(n).count("/") < 2 for n in names):
        raise ValueError(f"prototype_gallery: names must read '<class>/s<scale>/<m>', got {names!r:.80}")
    key = lambda i: (str(names[i]).rsplit("/", 2)[1], i)  # scale, then model order (a class name may hold '/')
    by_class: dict[str, dict[str, list[int]]] = {}
    for i in sorted(range(P), key=key):
        by_class.setdefault(str(names[i]).rsplit("/", 2)[0], {}).setdefault(key(i)[0], []).append(i)
    classes = list(by_class)[:max_classes] if max_classes > 0 else list(by_class)
    most = max((sum(map(len, s.values())) for s in by_class.values()), default=1)
    ncol = max(min(most, max_per_class), 1)
    rows = [sorted([s[t] for t in range(most) for s in by_class[c].values() if t < len(s)][:ncol], key=key) for c in classes]
    fs, p = 6.0, 0.75  # title font size, patch side
    unused = {i: used is not None and not used[i] for r in rows for i in r}
    extra = {i: "unused" if unused[i] else str(group_weights[i]) if group_weights is not None else "" for i in unused}
    labels = {i: "/".join(str(names[i]).rsplit("/", 2)[1:]) + ("\n" + _wrap(extra[i], p + 0.05, fs) if extra[i] else "") for i in unused}
    colw = max([p] + [_tw(t, fs) for t in labels.values()]) + 0.12
    band = max([_th(t, fs) for t in labels.values()] + [0.1]) + 0.05
    row_names = [_wrap(c, 1.6, 9) for c in classes]
    notes = [f"first {len(classes)} of {len(by_class)} classes"] * (len(classes) < len(by_class))
    notes += [f"{ncol} of up to {most} prototypes a class, spread over the scales"] * (ncol < most)
    notes += [f"greyed: {int(np.sum(~np.asarray(used, bool)))} of {P} unused"] * (used is not None)
    fig, axes = _grid(1, 1, ncol * colw, max(len(rows), 1) * (p + band), left=max([_tw(s, 9) for s in row_names] + [0]) + 0.2,
                      top=0.05, bottom=0.1, title=f"{title} ({'; '.join(notes)})" if notes else title)
    ax, ppi, side = axes[0, 0], patches.shape[1] / p, patches.shape[1]  # mosaic pixels per inch
    cw, rh = round(colw * ppi), round((p + band) * ppi)
    mosaic, rects = np.ones((max(len(rows), 1) * rh, ncol * cw, 3)), []
    for r, idx in enumerate(rows):
        for k, i in enumerate(idx):
            y, x = (r + 1) * rh - side, k * cw + (cw - side) // 2
            img = np.asarray(patches[i], float) / 255
            mosaic[y : y + side, x : x + side] = 0.55 + 0.4 * img.mean(-1, keepdims=True) if unused[i] else img
            if boxes[i][0] >= 0:
                rects.append(Rectangle((x + boxes[i][1] - 0.5, y + boxes[i][0] - 0.5), boxes[i][3] - boxes[i][1],
                                       boxes[i][2] - boxes[i][0]))
            ax.text(x + side / 2, y - 2, labels[i], ha="center", va="bottom", fontsize=fs,
                    color="firebrick" if unused[i] else "black")
        ax.text(-6, (r + 1) * rh - side / 2, row_names[r], ha="right", va="center", fontsize=9)
    ax.imshow(mosaic, aspect="auto", interpolation="nearest")
    ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor="yellow", linewidth=1.0))
    ax.axis("off")
    return fig


def message_figure(text: str):
    text = _wrap(text, 5.6, 10)
    fig = plt.figure(figsize=(6, _th(text, 10) + 0.5))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    return fig


def scale_usage_figure(table, title="Share of used prototype weight per scale", *, scale_labels=None):
    """Stacked horizontal bars: per class (and overall), the % of weight from each scale. `scale_labels` (one
    per column, e.g. ['rate 6', 'rate 12', …] from the ASPP dilation rates) names the scales in the legend;
    many classes are split over side-by-side panels of at most 50 bars."""
    S, n, fs = table.shape[1], len(table), 8
    labels = list(map(str, table.columns if scale_labels is None else scale_labels))
    if len(labels) != S:
        raise ValueError(f"scale_usage_figure: {len(labels)} scale_labels for {S} scales ({list(table.columns)}); "
                         "pass one label per scale, e.g. the ASPP rates of cfg.model.aspp_rates")
    npan = max(-(-n // 50), 1)
    per, lw = max(-(-n // npan), 1), max([_tw(s, fs) for s in table.index] + [0.3])
    ncol, _, leg_h = _legend_shape(labels, fs, max_w=npan * (4.0 + lw + 0.3))
    fig, axes = _grid(1, npan, 4.0, max(0.17 * per, 0.6), left=lw + 0.2, top=leg_h + 0.1, bottom=0.6, wgap=lw + 0.4,
                      title=title)
    colours = sns.color_palette("viridis", S)
    for p, ax in enumerate(axes[0]):
        chunk = table.iloc[p * per : (p + 1) * per].to_numpy(dtype=float)
        for k in range(S):
            y, x0 = np.arange(len(chunk)), chunk[:, :k].sum(1)
            _bars(ax, x0, x0 + chunk[:, k], y - 0.4, y + 0.4, colours[k], labels[k])
        ax.set_yticks(range(len(chunk)), list(map(str, table.index[p * per : (p + 1) * per])), fontsize=fs)
        ax.set(ylim=(per - 0.5, -0.5), xlim=(0, 100))
        ax.set_xlabel("% of the class's used prototype weight", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    _legend_at(fig, axes[0, 0], axes[0, 0].get_legend_handles_labels()[0], ncol, fs, above=True)
    return fig


def group_composition_figure(mats, cols, classes, title="Group composition: weights of each group over the class's prototypes",
                             *, max_classes: int = 12):
    """Per class, the G × n_c group-weight matrix, prototypes ordered by scale (s<scale>/<m>); 0 in white.
    Beyond `max_classes` classes (≤ 0: all) the first ones are drawn and the title says so."""
    n = len(mats) if max_classes <= 0 else min(len(mats), max_classes)
    if n == 0:
        return message_figure("No groups: group composition needs a grouped model.")
    ncol = 3 if n > 4 else n
    titles = [f"{classes[k]} ({int((mats[k] > 0).any(0).sum())}/{mats[k].shape[1]} used)" for k in range(n)]
    G, cmax = max(m.shape[0] for m in mats[:n]), max(max(m.shape[1] for m in mats[:n]), 1)
    xl, tl = max([_tw(c, 6) for k in range(n) for c in cols[k]] + [0.1]), _th("x", 9) + 0.1
    note = f" (first {n} of {len(mats)} classes)" if n < len(mats) else ""
    fig, axes = _grid(int(np.ceil(n / ncol)), ncol, max(cmax * 0.13, max(_tw(t, 9) for t in titles) + 0.1, 1.2),
                      max(G * 0.25, 0.9), left=0.4, right=1.2, top=tl, bottom=xl + 0.15, wgap=0.45, hgap=xl + tl + 0.2,
                      title=title + note)
    vmax, im = max(float(m.max()) if m.size else 0.0 for m in mats[:n]) or 1.0, None
    for ax in axes.flat[n:]:
        ax.axis("off")
    for k, ax in enumerate(axes.flat[:n]):
        if mats[k].size:
            im = ax.imshow(np.where(mats[k] > 0, mats[k], np.nan), cmap="viridis", vmin=0, vmax=vmax, aspect="auto",
                           interpolation="nearest")
        ax.set_xlim(-0.5, cmax - 0.5)
        ax.set_xticks(range(len(cols[k])), cols[k], rotation=90, fontsize=6)
        ax.set_yticks(range(mats[k].shape[0]), [f"g{g}" for g in range(mats[k].shape[0])], fontsize=7)
        for j in range(1, len(cols[k])):
            if cols[k][j].split("/")[0] != cols[k][j - 1].split("/")[0]:
                ax.axvline(j - 0.5, color="grey", lw=0.8)  # scale boundary
        ax.set_title(titles[k], fontsize=9)
    if im is not None:
        _colorbar(fig, im, axes[0, -1], "group weight (0: blank)", 0.2, 0.15, height=2.5)
    return fig


def failure_figure(cases, classes, *, max_maps: int = 4):
    """Per failing class: image, ground truth and prediction (the class red, the class it is confused with
    blue, the rest grey), then the `max_maps` most activated maps of each of the two classes, over the image
    with one colour scale a row."""
    fs, pw = 7, 1.5
    ph = float(np.clip(pw * cases[0]["image"].shape[0] / max(cases[0]["image"].shape[1], 1), 0.6, 2.4))
    rows = []
    for c in cases:
        a, na, b, nb = c["maps"]
        pick = [np.sort(np.argsort([-float(np.max(m)) for m in x])[:max_maps]) for x in (a, b)]
        maps = [a[j] for j in pick[0]] + [b[j] for j in pick[1]]
        heads = [f"{classes[c['class']]}: IoU {c['iou']:.0f} % · confused with {classes[c['other']]}", "ground truth",
                 "prediction"] + [f"{classes[c[w]]} · {n[j]}" for w, n, p in (("class", na, pick[0]), ("other", nb, pick[1]))
                                  for j in p]
        leg = [str(classes[c["class"]]), str(classes[c["other"]]), "other classes", "void"]
        shape = _legend_shape(leg, fs, ncol=2 if _legend_shape(leg, fs, ncol=2)[1] <= 2 * pw else 1)
        rows.append((maps, [_wrap(h, pw, fs) for h in heads], leg, shape))
    ncol, band = 3 + max(len(r[0]) for r in rows), max(_th(h, fs) for r in rows for h in r[1]) + 0.05
    leg_h = max(r[3][2] for r in rows)
    fig, axes = _grid(len(cases), ncol, pw, ph, left=0.15, right=0.75, top=band, bottom=leg_h + 0.1, wgap=0.08,
                      hgap=band + leg_h + 0.15, fs=11,
                      title="Failure cases: the lowest-IoU classes and the activations of the class they are confused with")
    for r, (c, (maps, heads, leg, shape)) in enumerate(zip(cases, rows)):
        row, lo, hi = axes[r], min(map(np.min, maps), default=0.0), max(map(np.max, maps), default=1.0)
        row[0].imshow(c["image"])
        for ax, lab in zip(row[1:3], (c["label"], c["pred"])):
            rgb = np.full((*lab.shape, 3), 0.85)
            for v, col in zip((c["class"], c["other"], 255), (_PAIR[0], _PAIR[1], VOID_COLOUR)):
                rgb[lab == v] = col
            ax.imshow(rgb, interpolation="nearest")
        for ax, m in zip(row[3:], maps):
            ax.imshow(c["image"])
            im = ax.imshow(m, cmap="jet", alpha=0.5, vmin=lo, vmax=hi)
        for ax, t in zip(row, heads + [""] * ncol):
            ax.set_title(t, fontsize=fs)
            ax.axis("off")
        row[1].legend(handles=[Patch(color=col, label=s) for col, s in zip(_PAIR, leg)], loc="upper left", ncol=shape[0],
                      bbox_to_anchor=(0, -0.02), fontsize=fs, frameon=False, borderaxespad=0, borderpad=0)
        if maps:
            _colorbar(fig, im, row[2 + len(maps)], "activation", 0.08, 0.1, fs=fs)
    return fig

