"""The figures that explain predictions: plain data in, a matplotlib Figure out (nothing here shows or saves).

- `explanation_figure`: image, (ground truth,) prediction with a legend of the classes present; then per
  explained class a heading, the winner per predicted pixel, the DeepLab Grad-CAM map (when given), each
  group's / prototype's activation map (framed in its winner colour, one colour scale per class with its
  colour bar) and the source patches of the prototypes that decided it.
- `nearest_figure`: per pixel, the image with the pixel marked, then one row per scale with the k nearest
  prototypes of that scale (two-line titles: class, then scale/rank and distance).

Every panel is laid out by matplotlib's constrained layout on a grid, so no text runs into a neighbour
or off the canvas; legends live in their own panel.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.patches import Patch, Rectangle

from ..plots import VOID_COLOUR, class_palette, colourise

PANEL = 1.65  # inches per image panel
NCOL = 7  # image columns of the explanation figure
LEGEND_MAX = 14  # classes listed in the prediction's legend
FONT = 8
OTHER = (0.55, 0.55, 0.55)  # winner colour of a map that is not shown
DRAWN = 256  # at most this many pixels of an image side are drawn (a panel is ~180 px wide)


def _short(text: str, n: int) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _image_panel(ax, image, title):
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=FONT + 1)
    ax.axis("off")


def _frame(ax, colour):
    """Keep the axes frame (as a coloured border linking a panel to its winner colour), without ticks."""
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(colour)
        spine.set_linewidth(3)


def _legend_panel(ax, expl, width_in: float):
    """The classes present in the prediction (and ground truth), largest first, in a panel of their own."""
    ax.axis("off")
    K = len(expl.class_names)
    pal = class_palette(K)
    pred_counts = np.bincount(expl.pred.ravel(), minlength=K)[:K]
    gt_counts = np.zeros(K, np.int64)
    has_void = False
    if expl.label is not None:
        valid = expl.label < K
        gt_counts = np.bincount(expl.label[valid].ravel(), minlength=K)[:K]
        has_void = bool((~valid).any())
    order = sorted(np.nonzero(pred_counts + gt_counts)[0], key=lambda k: (-pred_counts[k], -gt_counts[k], k))
    shown, hidden = order[:LEGEND_MAX], len(order) - LEGEND_MAX
    handles = [Patch(color=pal[k], label=f"{_short(expl.class_names[k], 20)} "
                     + (f"({100 * pred_counts[k] / expl.pred.size:.0f} %)" if pred_counts[k] else "(not predicted)"))
               for k in shown]
    if has_void:
        handles.append(Patch(color=VOID_COLOUR, label="void (ground truth)"))
    if hidden > 0:
        handles.append(Patch(color="white", label=f"+{hidden} more classes"))
    ncol = max(1, min(int(width_in // 2.1), int(np.ceil(len(handles) / 3))))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), ncol=ncol, fontsize=FONT, frameon=False,
              title="class (% of the pixels predicted)", title_fontsize=FONT, alignment="left")


def _overlay(ax, image, values, mask, vmin, vmax):
    ax.imshow(image)
    im = ax.imshow(values, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.8)
    return im


def _heading(ax, rank: int, e, grouped: bool):
    ax.axis("off")
    what = "group" if grouped else "prototype"
    ax.text(0.0, 0.95, f"{rank}. '{_short(e.name, 40)}': predicted on {e.share:.1f} % of the image",
            fontsize=FONT + 2, fontweight="bold", va="top", ha="left", transform=ax.transAxes)
    how = ("activation × head weight; maps: each group's activation exp(W·a)" if grouped
           else "log-similarity × last-layer weight; maps: each prototype's log-similarity")
    ax.text(0.0, 0.35, f"Left: the {what} that wins each predicted pixel ({how}); white outline: the predicted "
            f"pixels. Below: source patches of the prototypes that decided it.", fontsize=FONT, va="top", ha="left",
            transform=ax.transAxes, wrap=False)


def _patch_panel(ax, patch, box, title, colour):
    ax.imshow(patch)
    y0, x0, y1, x1 = box
    if y0 >= 0:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2))
    _frame(ax, colour)
    ax.set_title(title, fontsize=FONT)


def _note(ax, text):
    ax.axis("off")
    ax.text(0.0, 0.5, text, fontsize=FONT + 1, va="center", ha="left", transform=ax.transAxes, style="italic")


def patches_note(patches, n_prototypes: int) -> str | None:
    """Why no source patch can be shown (None: they can)."""
    if patches is None:
        return ("No source patches: patches.npz is not next to the checkpoint (the project stage writes it; "
                "copy it beside model.pt).")
    if len(patches[0]) != n_prototypes:
        return (f"No source patches: patches.npz holds {len(patches[0])} prototypes, the model {n_prototypes} "
                "(it belongs to another model).")
    return None


def explanation_figure(expl, patches=None, title: str = ""):
    """The explanation of one image (`explain.Explanation`). `patches`: (patches, boxes, names) from
    `artifacts.read_patches`, or None (said in the figure)."""
    has_gt = expl.label is not None
    note = patches_note(patches, expl.n_prototypes)
    heights = [PANEL + 0.35]
    for _ in expl.classes:
        heights += [0.55, PANEL + 0.3, PANEL + 0.45 if note is None else 0.45]
    fig = plt.figure(figsize=(NCOL * PANEL + 1.0, sum(heights) + 0.6), layout="constrained")
    gs = fig.add_gridspec(len(heights), NCOL + 1, height_ratios=heights, width_ratios=[1.0] * NCOL + [0.12])
    K = len(expl.class_names)
    step = max(1, int(np.ceil(max(expl.pred.shape) / DRAWN)))

    def th(a):  # what is drawn: every step-th pixel (a panel shows fewer pixels than that anyway)
        return a[::step, ::step]

    image = th(expl.image)
    _image_panel(fig.add_subplot(gs[0, 0]), image, f"image ({expl.image.shape[1]}×{expl.image.shape[0]})")
    col = 1
    if has_gt:
        _image_panel(fig.add_subplot(gs[0, col]), colourise(th(expl.label), K), "ground truth")
        col += 1
    _image_panel(fig.add_subplot(gs[0, col]), colourise(th(expl.pred), K), "prediction")
    _legend_panel(fig.add_subplot(gs[0, col + 1:]), expl, (NCOL - col - 1) * PANEL)
    for r, e in enumerate(expl.classes):
        row = 1 + 3 * r
        _heading(fig.add_subplot(gs[row, :]), r + 1, e, expl.grouped)
        n = len(e.labels)
        pal = np.array(sns.color_palette("tab10" if n <= 10 else "tab20", max(n, 1)))[:n]
        order = [int(k) for k in np.argsort(-e.wins, kind="stable")]
        first = 2 if e.gradcam is not None else 1
        shown = order[: NCOL - first]
        colours = np.array([pal[k] if k in shown else OTHER for k in range(n)])
        overlay = image.astype(float) / 255
        winner = th(e.winner)
        inside = winner >= 0
        overlay[inside] = 0.4 * overlay[inside] + 0.6 * colours[winner[inside]]
        ax = fig.add_subplot(gs[row + 1, 0])
        ax.imshow(overlay)
        ax.axis("off")
        ax.set_title("winner per pixel", fontsize=FONT)
        others = sum(1 for k in order[len(shown):] if e.wins[k] > 0)
        if others:
            ax.text(0.5, -0.04, f"grey: {others} more", transform=ax.transAxes, ha="center", va="top", fontsize=FONT - 1)
        if e.gradcam is not None:
            ax = fig.add_subplot(gs[row + 1, 1])
            _overlay(ax, image, th(e.gradcam), th(e.mask), 0.0, 1.0)
            ax.axis("off")
            ax.set_title("Grad-CAM (DeepLab)", fontsize=FONT)
        vals = e.maps[shown] if shown else e.maps
        vmin, vmax = float(np.min(vals)), float(np.max(vals))
        im = None
        for j, k in enumerate(shown):
            ax = fig.add_subplot(gs[row + 1, first + j])
            im = _overlay(ax, image, th(e.maps[k]), th(e.mask), vmin, vmax)
            _frame(ax, pal[k])
            ax.set_title(f"{e.labels[k]} · wins {e.wins[k]:.0f} %", fontsize=FONT)
        if im is not None:
            free = first + len(shown)
            if free < NCOL:  # beside the last map, in the first free cell (its ticks and label fit there)
                host = fig.add_subplot(gs[row + 1, free])
                host.axis("off")
                cax = host.inset_axes([0.0, 0.0, 0.08, 1.0])
            else:
                cax = fig.add_subplot(gs[row + 1, NCOL])
            cb = fig.colorbar(im, cax=cax)
            cb.set_label("activation exp(W·a)" if expl.grouped else "log-similarity", fontsize=FONT)
            cb.ax.tick_params(labelsize=FONT - 1)
        if note is not None or not e.deciding:
            _note(fig.add_subplot(gs[row + 2, :]), note or "No prototype wins a predicted pixel.")
            continue
        label_index = {lab: k for k, lab in enumerate(e.labels)}
        for j, d in enumerate(e.deciding[:NCOL]):
            owner = label_index[d["group"] if d["group"] is not None else d["label"]]
            colour = colours[owner]
            if d["group"] is not None:
                t = f"{d['group']} · {d['label']}\nweight {d['weight']:.2f}"
            else:
                t = f"{d['label']}\nwins {d['wins_%']:.0f} %"
            _patch_panel(fig.add_subplot(gs[row + 2, j]), patches[0][d["prototype"]], patches[1][d["prototype"]], t, colour)
    if title:
        fig.suptitle(title, fontsize=FONT + 3)
    return fig


def nearest_figure(image, rows, patches, boxes, names, title: str, rates=None):
    """Per pixel: the image with the pixel marked (left), then one row per scale with that scale's k most
    similar prototypes (distances are only comparable within a scale). `rows`: [((y, x), class name,
    [[(prototype, distance), ...] per scale])]; `rates`: the dilation rate of each scale, if known."""
    if not rows:
        fig = plt.figure(figsize=(6, 1))
        fig.text(0.5, 0.5, "No labelled pixel to look up.", ha="center", va="center")
        return fig
    S, k = len(rows[0][2]), max(len(h) for h in rows[0][2])
    row_h = 1.3
    fig = plt.figure(figsize=(max(2.3 + 1.45 * k + 0.4, 7.2), row_h * S * len(rows) + 0.9), layout="constrained")
    gs = fig.add_gridspec(S * len(rows), 1 + k, width_ratios=[1.6] + [1.0] * k)
    marks = ["red", "lime", "cyan", "orange"]
    for r, ((y, x), cls, per_scale) in enumerate(rows):
        ax = fig.add_subplot(gs[r * S:(r + 1) * S, 0])
        ax.imshow(image)
        ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=marks[r % 4], mew=2.5)
        ax.set_title(f"pixel {r + 1}: {_short(cls, 18)}", fontsize=FONT + 1)
        ax.axis("off")
        for s, hits in enumerate(per_scale):
            for j, (p, dist) in enumerate(hits):
                ax = fig.add_subplot(gs[r * S + s, 1 + j])
                ax.imshow(patches[p])
                y0, x0, y1, x1 = boxes[p]
                if y0 >= 0:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
                pcls, scale, m = (str(names[p]).rsplit("/", 2) + ["", ""])[:3]
                ax.set_title(f"{_short(pcls, 17)}\n{scale}/{m} · d={dist:.3g}", fontsize=FONT - 0.5)
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0 and (S > 1 or rates is not None):
                    ax.set_ylabel(f"scale s{s}" + (f"\nrate {rates[s]}" if rates is not None and s < len(rates) else ""),
                                  fontsize=FONT)
    fig.suptitle(f"{title}\nthe {k} nearest prototypes of each scale (distances compare only within a scale)",
                 fontsize=FONT + 2)
    return fig


FAITH_LABELS = {"own": "own map", "gradcam": "Grad-CAM (this model)", "inverse": "own map, inverted",
                "random": "random", "deeplab_gradcam": "Grad-CAM (DeepLab)", "deeplab_inverse": "Grad-CAM (DeepLab), inverted",
                "deeplab_random": "random (DeepLab)"}


def faithfulness_figure(curves: dict, title: str = ""):
    """Mean deletion and insertion curves per explanation type: `curves[name] = (fraction of cells,
    mean deletion score / s0, mean insertion score / s0)`, the area under each in the legend."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    if not curves:
        for ax in axes:
            ax.axis("off")
        axes[0].text(0, 0.5, "No image with an explained class.", fontsize=FONT + 2)
        return fig
    pal = sns.color_palette("tab10", len(FAITH_LABELS))
    for ax, j, what, better in ((axes[0], 1, "deletion", "lower"), (axes[1], 2, "insertion", "higher")):
        for k, (name, c) in enumerate(curves.items()):
            frac, y = c[0], c[j]
            area = float(np.sum((y[1:] + y[:-1]) * np.diff(frac)) / 2)
            style = "--" if name.startswith("deeplab") else "-"
            ax.plot(frac, y, style, color=pal[list(FAITH_LABELS).index(name) if name in FAITH_LABELS else k],
                    label=f"{FAITH_LABELS.get(name, name)} (AUC {area:.2f})")
        ax.set_xlabel(f"fraction of output-grid cells {'removed' if what == 'deletion' else 'revealed'}", fontsize=FONT + 1)
        ax.set_ylabel("class score / unperturbed score", fontsize=FONT + 1)
        ax.set_title(f"{what} ({better} AUC: more faithful)", fontsize=FONT + 2)
        ax.legend(fontsize=FONT - 1)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=FONT + 3)
    return fig
