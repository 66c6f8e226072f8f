"""Every figure of the reports: plain data in, a matplotlib Figure out. Nothing here shows or saves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

VOID_COLOUR = (0.0, 0.0, 0.0)


def class_palette(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1] (background first, a neutral grey)."""
    base = sns.color_palette("tab10" if n <= 10 else "tab20", n_colors=max(n, 1))
    pal = np.array(base[:n], dtype=float)
    if n:
        pal[0] = (0.75, 0.75, 0.75)
    return pal


def colourise(label: np.ndarray, n_classes: int, void: int = 255) -> np.ndarray:
    """Label map → RGB image; void pixels black."""
    pal = np.vstack([class_palette(n_classes), np.zeros((256 - n_classes, 3))])
    rgb = pal[np.clip(label, 0, 255)]
    rgb[label == void] = VOID_COLOUR
    return rgb


def _legend(ax, names, n):
    pal = class_palette(n)
    handles = [Patch(color=pal[i], label=names[i]) for i in range(n)] + [Patch(color=VOID_COLOUR, label="void")]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def confusion_figure(cm: np.ndarray, class_names, title: str = "Confusion matrix (row-normalised, %)"):
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(100 * cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.2 + 0.55 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(norm, annot=len(class_names) <= 25, fmt=".0f", cmap="Blues", vmin=0, vmax=100,
                xticklabels=class_names, yticklabels=class_names, ax=ax, cbar_kws={"label": "% of ground-truth pixels"})
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def predictions_figure(images, labels, preds, class_names, titles=None):
    """Columns: image, ground truth, prediction — one row per example."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(8.5, 2.6 * n), squeeze=False)
    k = len(class_names)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 1].imshow(colourise(labels[i], k), interpolation="nearest")
        axes[i, 2].imshow(colourise(preds[i], k), interpolation="nearest")
        axes[i, 0].set_ylabel(titles[i] if titles else f"example {i}", fontsize=8)
    for ax, t in zip(axes[0], ("image", "ground truth", "prediction")):
        ax.set_title(t)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    _legend(axes[0, 2], class_names, k)
    fig.tight_layout()
    return fig


def per_class_iou_figure(table, title="Per-class IoU (%)"):
    """`table`: DataFrame with index = class names and one column per method."""
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(table.index) * max(1, len(table.columns)) ** 0.5, 3.4))
    table.plot.bar(ax=ax, width=0.8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(title="method", fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def curves_figure(curves: dict, title="Training curves"):
    """`curves`: {method: {"<phase>/<quantity>": DataFrame(step, value)}} → one panel per quantity (loss,
    learning rate, validation mIoU), one line per method and phase, over the method's global step."""
    panels = sorted({k.split("/")[-1] for c in curves.values() for k in c}, key=lambda q: (q != "loss", q))
    names = {"loss": "training loss", "lr": "learning rate (first group)", "miou": "validation mIoU (%)"}
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.6 * max(len(panels), 1), 3.4), squeeze=False)
    for ax, q in zip(axes[0], panels):
        for method, c in curves.items():
            for key in sorted(c, key=lambda k: float(c[k]["step"].min())):
                if key.split("/")[-1] != q:
                    continue
                phase = key.split("/")[0]
                df = c[key]
                label = method if phase in ("train", "val") else f"{method} · {phase}"
                ax.plot(df["step"], df[df.columns[-1]], label=label, marker="o" if len(df) < 12 else None, ms=3)
        ax.set_title(names.get(q, q))
        ax.set_xlabel("mini-batch step (across phases)")
        if q == "lr":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> None:
    """Save atomically as PNG (the only file-writing helper here) and close the figure."""
    from .io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def prototype_gallery(patches: np.ndarray, boxes: np.ndarray, names, title: str = "Prototypes: source patches",
                      max_classes: int = 12, max_per_class: int = 12, used=None, group_weights=None):
    """One row per class, its prototypes ordered by scale; each shows the image patch its vector was
    projected from, with the high-activation box. Names are '<class>/s<scale>/<m>'. With a grouped model,
    `used` (bool per prototype) greys out and marks unused prototypes and `group_weights` (a label per
    prototype, e.g. 'g0:0.42 g2:0.31') says which groups use each one and with what weight."""
    from matplotlib.patches import Rectangle

    by_class: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_class.setdefault(str(n).split("/")[0], []).append(i)
    classes = list(by_class)[:max_classes]
    ncol = max(min(max(len(v) for v in by_class.values()), max_per_class), 1)
    fig, axes = plt.subplots(len(classes), ncol, figsize=(1.3 * ncol, 1.5 * len(classes)), squeeze=False)
    for r, c in enumerate(classes):
        idx = sorted(by_class[c], key=lambda i: (str(names[i]).split("/")[1], i))[:ncol]
        for k in range(ncol):
            ax = axes[r, k]
            ax.axis("off")
            if k >= len(idx):
                continue
            i = idx[k]
            unused = used is not None and not used[i]
            ax.imshow(patches[i], alpha=0.35 if unused else 1.0)
            y0, x0, y1, x1 = boxes[i]
            if y0 >= 0:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1.2))
            label = "/".join(str(names[i]).split("/")[1:])
            if unused:
                ax.text(0.5, 0.5, "unused", transform=ax.transAxes, ha="center", va="center", color="red",
                        fontsize=8, fontweight="bold")
            elif group_weights is not None and group_weights[i]:
                label += "\n" + group_weights[i].replace(" ", "\n", 1) if len(group_weights[i]) > 14 else "\n" + group_weights[i]
            ax.set_title(label, fontsize=6)
        axes[r, 0].text(-0.15, 0.5, c, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def message_figure(text: str):
    fig, ax = plt.subplots(figsize=(6, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def scale_usage_figure(table, title="Share of used prototype weight per scale"):
    """Stacked horizontal bars: per class (and overall), the % of weight from each scale."""
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1.4))
    left = np.zeros(len(table))
    colours = sns.color_palette("viridis", table.shape[1])
    for k, col in enumerate(table.columns):
        ax.barh(table.index, table[col], left=left, color=colours[k], label=col)
        left += table[col].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("% of the class's used prototype weight")
    ax.set_xlim(0, 100)
    ax.legend(ncol=table.shape[1], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(title)
    fig.tight_layout()
    return fig


def group_composition_figure(mats, cols, classes, title="Group composition: weights of each group over the class's prototypes"):
    """Per class, the G × n_c group-weight matrix, prototypes ordered by scale (s<scale>/<m>); 0 in white."""
    n = len(mats)
    ncol = 3 if n > 4 else n
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 2.5 * nrow + 0.8), squeeze=False, layout="constrained")
    vmax = max(float(m.max()) for m in mats) if mats else 1.0
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        m = np.where(mats[k] > 0, mats[k], np.nan)
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols[k])))
        ax.set_xticklabels(cols[k], rotation=90, fontsize=6)
        ax.set_yticks(range(m.shape[0]))
        ax.set_yticklabels([f"g{g}" for g in range(m.shape[0])], fontsize=7)
        scales = [c.split("/")[0] for c in cols[k]]
        for j in range(1, len(scales)):
            if scales[j] != scales[j - 1]:
                ax.axvline(j - 0.5, color="grey", lw=0.8)  # scale boundary
        ax.set_title(f"{classes[k]} ({int((mats[k] > 0).any(0).sum())}/{mats[k].shape[1]} used)", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="group weight (0: blank)")
    fig.suptitle(title)
    return fig


def _maps_row(axes, maps, names, image, mask=None):
    """Activation maps over the image (one colour scale for the row), each with its name."""
    vmin, vmax = float(np.min(maps)), float(np.max(maps))
    im = None
    for ax, m, n in zip(axes, maps, names):
        ax.imshow(image)
        shown = np.where(mask, m, np.nan) if mask is not None else m
        im = ax.imshow(shown, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        ax.set_title(n, fontsize=8)
        ax.axis("off")
    return im


def explanation_figure(image, label, pred, maps, names, winner, mask, classes, title):
    """Image, ground truth, prediction, summary (winning group/prototype inside the class), then the maps."""
    n = len(maps)
    ncol = 4
    nrow = 1 + int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    K = len(classes)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image")
    axes[0, 1].imshow(colourise(label, K))
    axes[0, 1].set_title("ground truth")
    axes[0, 2].imshow(colourise(pred, K))
    axes[0, 2].set_title("prediction")
    _legend(axes[0, 2], classes, K)
    palette = np.array(sns.color_palette("tab10" if n <= 10 else "tab20", n))
    overlay = image.astype(float) / 255
    overlay[mask] = 0.45 * overlay[mask] + 0.55 * palette[winner[mask]]
    axes[0, 3].imshow(overlay)
    axes[0, 3].set_title("winner inside the class", fontsize=9)
    axes[0, 3].legend(handles=[Patch(color=palette[k], label=names[k]) for k in range(n)], fontsize=6,
                      loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes[0]:
        ax.axis("off")
    flat = axes[1:].ravel()
    im = _maps_row(flat, maps, names, image)
    for ax in flat[n:]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=list(flat[:n]), shrink=0.7, label="activation (log similarity; groups: exp of weighted sum)")
    fig.suptitle(title)
    return fig


def nearest_figure(image, rows, patches, boxes, names, title):
    """Per pixel: the image with the pixel marked, then per scale the k most similar prototypes."""
    from matplotlib.patches import Rectangle

    n_scales = len(rows[0][2])
    k = len(rows[0][2][0])
    ncol = 1 + n_scales * k
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.45 * ncol, 1.7 * len(rows)), squeeze=False)
    marks = ["red", "lime", "cyan", "orange"]
    for r, ((y, x), cls, per_scale) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(image)
        ax.plot([x], [y], marker="o", ms=7, mfc="none", mec=marks[r % 4], mew=2)
        ax.set_title(f"pixel {r} ({cls})", fontsize=7)
        ax.axis("off")
        for s, hits in enumerate(per_scale):
            for j, (p, dist) in enumerate(hits):
                ax = axes[r, 1 + s * k + j]
                ax.imshow(patches[p])
                y0, x0, y1, x1 = boxes[p]
                if y0 >= 0:
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="yellow", lw=1))
                ax.set_title(f"{names[p]}\nd={dist:.2f}", fontsize=6)
                ax.axis("off")
    fig.suptitle(title + " — distances compared only within a scale")
    fig.tight_layout()
    return fig


def failure_figure(cases, classes):
    """Per failing class: image, ground truth, prediction, then its maps and the confusing class's maps."""
    ncol = 3 + max(len(c["maps"][1]) + len(c["maps"][3]) for c in cases)
    ncol = min(ncol, 12)
    fig, axes = plt.subplots(len(cases), ncol, figsize=(1.9 * ncol, 2.2 * len(cases)), squeeze=False)
    K = len(classes)
    for r, c in enumerate(cases):
        a, na, b, nb = c["maps"]
        axes[r, 0].imshow(c["image"])
        axes[r, 0].set_title(f"{classes[c['class']]}: IoU {c['iou']:.0f} %\nconfused with {classes[c['other']]}", fontsize=7)
        axes[r, 1].imshow(colourise(c["label"], K))
        axes[r, 1].set_title("ground truth", fontsize=7)
        axes[r, 2].imshow(colourise(c["pred"], K))
        axes[r, 2].set_title("prediction", fontsize=7)
        maps = np.concatenate([a, b])
        labels = [f"{classes[c['class']]} · {n}" for n in na] + [f"{classes[c['other']]} · {n}" for n in nb]
        _maps_row(axes[r, 3:], maps[: ncol - 3], labels[: ncol - 3], c["image"])
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("Failure cases: the lowest-IoU classes and the activations of the class they are confused with")
    fig.tight_layout()
    return fig
