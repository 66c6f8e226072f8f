"""Every report figure, drawn with realistic inputs for 2, 21 and 150 classes, has no overlapping text,
no text off the canvas and no text over another panel; and the checker itself catches such defects."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import seaborn as sns

from scaleprotoseg import plots
from scaleprotoseg.data.class_names import PASCAL_CLASSES

from .figure_checks import assert_clean, text_problems

# ADE20K's 150 classes (first synonym of objectInfo150): long, multi-word names are the hard case.
ADE = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
CLASSES = {2: ("background", "foreground"), 21: PASCAL_CLASSES, 150: ADE}
METHODS = ("deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups")
RATES = [6, 12, 18, 24]


def _names(k: int) -> tuple[str, ...]:
    assert len(CLASSES[k]) == k
    return CLASSES[k]


# ---------------------------------------------------------------------------------------------- the checker


def test_checker_catches_overlapping_texts_and_off_canvas_label():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)  # starts inside the first
    ax.set_ylabel("pushed far left", labelpad=300)  # off the canvas
    problems = text_problems(fig)
    plt.close(fig)
    assert any("'first label' overlaps" in p and "'second label'" in p for p in problems), problems
    assert any("'pushed far left' leaves the canvas" in p for p in problems), problems
    assert len(problems) == 2, problems


def test_checker_catches_a_legend_behind_the_next_panel_and_over_the_axis_label():
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3))
    a.plot([0, 1], [0, 1], label="a line with a long name")
    a.legend(loc="center left", bbox_to_anchor=(0.9, 0.5))  # reaches into panel b, drawn after a
    b.imshow(np.zeros((4, 4)))
    b.set_xlabel("hidden label")
    b.legend(handles=[plt.Line2D([], [], label="x")], loc="upper center", bbox_to_anchor=(0.5, -0.02))
    problems = text_problems(fig)
    plt.close(fig)
    assert any("the legend of panel 0 is hidden behind the plotting area of panel 1" in p for p in problems), problems
    assert any("the legend box of panel 1 hides x label of panel 1 'hidden label'" in p for p in problems), problems


def test_checker_accepts_a_plain_figure_and_ignores_hidden_texts():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_title("fine")
    ax.text(0.5, 0.5, "invisible", visible=False)
    ax.set_xlim(0, 1)
    fig.tight_layout()
    assert text_problems(fig) == []
    assert_clean(fig)
    ax.set_xlabel("x" * 200)
    with pytest.raises(AssertionError, match="leaves the canvas"):
        assert_clean(fig)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- the inputs


def _label_maps(k: int, n: int, size: int = 96, seed: int = 0):
    """n label maps with a handful of rectangles of random classes each (ADE-like: many classes present)."""
    rng = np.random.default_rng([seed, k])
    out = []
    for _ in range(n):
        lab = np.full((size, size), rng.integers(0, k), np.uint8)
        for _ in range(min(k, 12)):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(6, size // 2, 2)
            lab[y : y + h, x : x + w] = rng.integers(0, k)
        lab[0, :] = 255
        out.append(lab)
    return out


def _images(labels, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8) for lab in labels]


def _proto_names(k: int, per_scale: int = 3, scales: int = 4):
    """'<class>/s<scale>/<m>' in the model's order (scale-major), 3 per class and scale as in params.yaml."""
    return [f"{_names(k)[c]}/s{s}/{m}" for s in range(scales) for c in range(k) for m in range(per_scale)]


def _prototypes(k: int, per_scale: int = 3):
    names, rng = _proto_names(k, per_scale), np.random.default_rng(k)
    P = len(names)
    patches = rng.integers(0, 255, (P, 64, 64, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[12.0, 10.0, 44.0, 50.0]], np.float32), (P, 1))
    boxes[::7] = -1  # prototypes without a source
    used = rng.random(P) > 0.3
    weights = [" ".join(f"g{g}:{rng.random():.2f}" for g in range(int(rng.integers(1, 4)))) if u else "" for u in used]
    return patches, boxes, names, used, weights


def _confusion(k: int):
    rng = np.random.default_rng(k)
    cm = rng.integers(0, 50, (k, k)) + np.diag(rng.integers(100, 1000, k))
    cm[-1] = 0  # a class absent from the ground truth
    return cm


def _curves():
    rng = np.random.default_rng(1)
    out = {}
    for m in METHODS:
        phases = ["train"] if m == "deeplab" else ["warmup", "joint", "finetune"] + (["group_joint"] if "groups" in m else [])
        c, start = {}, 0
        for ph in phases:
            steps = np.arange(start, start + 40, 2)
            c[f"{ph}/loss"] = pd.DataFrame({"step": steps, ph + "/loss": 3 * np.exp(-steps / 50) + rng.random(len(steps))})
            c[f"{ph}/lr"] = pd.DataFrame({"step": steps, ph + "/lr": np.full(len(steps), 1e-3 * (1 + len(ph)))})
            start += 40
        c["val/miou"] = pd.DataFrame({"step": np.arange(0, start, 20), "val/miou": np.linspace(5, 60, start // 20)})
        out[m] = c
    return out


def _scale_usage(k: int):
    rng = np.random.default_rng(k)
    share = rng.dirichlet(np.ones(4), k + 1) * 100
    return pd.DataFrame(share, index=[*_names(k), "all classes"], columns=[f"scale {s}" for s in range(4)])


def _group_composition(k: int, groups: int = 3):
    rng = np.random.default_rng(k)
    names = _proto_names(k)
    mats, cols = [], []
    for c in _names(k):
        mine = [n for n in names if n.split("/")[0] == c]
        m = rng.random((groups, len(mine)))
        m[m < 0.6] = 0
        mats.append(m)
        cols.append(["/".join(n.split("/")[1:]) for n in mine])
    return mats, cols, list(_names(k))


def _failure_cases(k: int, grouped: bool):
    labels = _label_maps(k, 2, seed=3)
    cases = []
    for r, lab in enumerate(labels):
        n = 3 if grouped else 12
        names = [f"group {g}" for g in range(n)] if grouped else [f"prototype s{m // 3}/{m % 3}" for m in range(n)]
        maps = np.random.default_rng(r).random((n, *lab.shape)).astype(np.float32)
        cases.append({"class": k - 1 - r, "other": r, "iou": 12.5 * r, "image": _images([lab])[0], "label": lab,
                      "pred": np.roll(lab, 9, 1), "maps": (maps, names, maps[::-1], names), "id": f"img{r}"})
    return cases


# ---------------------------------------------------------------------------------------------- the figures


def _figures(k: int):
    """{name: thunk} for every figure of plots.py drawn from plain data, at k classes."""
    names = _names(k)
    labels = _label_maps(k, 3)
    preds = [np.roll(lab, 5, 0) for lab in labels]
    iou = pd.DataFrame({m: np.random.default_rng(i).random(k) * 100 for i, m in enumerate(METHODS)}, index=list(names))
    iou.iloc[-1] = np.nan
    patches, boxes, pnames, used, weights = _prototypes(k)
    return {
        "confusion": lambda: plots.confusion_figure(_confusion(k), names, "scaleprotoseg_groups: confusion matrix (row-normalised, %)"),
        "predictions": lambda: plots.predictions_figure(_images(labels), labels, preds, names,
                                                        titles=[f"ADE_val_{i:08d}" for i in range(3)]),
        "per_class_iou": lambda: plots.per_class_iou_figure(iou),
        "gallery_used": lambda: plots.prototype_gallery(patches, boxes, pnames, used=used, group_weights=weights,
                                                        title="scaleprotoseg_groups: prototypes by class and scale (source patches)"),
        "scale_usage": lambda: plots.scale_usage_figure(_scale_usage(k), scale_labels=[f"rate {r}" for r in RATES],
                                                        title="scaleprotoseg_groups: share of used prototype weight per scale"),
        "group_composition": lambda: plots.group_composition_figure(*_group_composition(k)),
        "failure_prototypes": lambda: plots.failure_figure(_failure_cases(k, False), names),
        # variants whose layout does not depend on the number of classes: drawn at 21 classes only
        "curves": lambda: plots.curves_figure(_curves()),
        "gallery_capped": lambda: plots.prototype_gallery(*_prototypes(k, per_scale=10)[:3], title="protoseg: prototypes by class"),
        "scale_usage_default": lambda: plots.scale_usage_figure(_scale_usage(k)),
        "failure_groups": lambda: plots.failure_figure(_failure_cases(k, True), names),
        "message": lambda: plots.message_figure("No prototype method in experiment.methods: no gallery. " * 3),
    }


ONCE = ("curves", "gallery_capped", "scale_usage_default", "failure_groups", "message")
CASES = [(k, n) for k in (2, 21, 150) for n in _figures(2) if n not in ONCE] + [(21, n) for n in ONCE]


@pytest.mark.parametrize("k,name", CASES, ids=[f"{n}-{k}" for k, n in CASES])
def test_figure_text_is_readable(k, name):
    fig = _figures(k)[name]()
    try:
        assert text_problems(fig) == []
        w, h = fig.get_size_inches()
        assert 2 <= w <= 30 and 0.5 <= h <= 40, f"{name} at {k} classes is {w:.1f} × {h:.1f} in"
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------- what they show


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_gallery_greys_out_exactly_the_unused_prototypes_and_keeps_the_used_ones():
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    patches[..., 0], patches[..., 1] = 255, 0  # every pixel coloured: none is grey by chance
    names = ["cat/s0/0", "cat/s1/0", "dog/s0/0", "dog/s1/0"]
    used = np.array([True, False, True, False])
    fig = plots.prototype_gallery(patches, np.full((4, 4), -1.0), names, used=used)
    mosaic = fig.axes[0].images[0].get_array()
    coloured = np.ptp(mosaic, axis=-1) > 1e-6  # white background and greyed patches have R = G = B
    assert coloured.sum() == 2 * 64 * 64  # only the two used patches keep their colour
    corners = [(y, x) for y, x in zip(*np.nonzero(coloured)) if not coloured[y - 1, x] and not coloured[y, x - 1]]
    drawn = [np.asarray(mosaic[y : y + 64, x : x + 64]) for y, x in corners]
    assert len(drawn) == 2 and all(any(np.allclose(d, patches[i] / 255) for d in drawn) for i in np.flatnonzero(used))
    assert sum("unused" in t for t in _texts(fig)) == 2
    assert "greyed: 2 of 4 unused" in fig._suptitle.get_text().replace("\n", " ")
    plt.close(fig)


def test_capped_gallery_spreads_over_the_scales_and_says_so():
    patches, boxes, names = _prototypes(21, per_scale=10)[:3]  # 40 prototypes a class
    fig = plots.prototype_gallery(patches, boxes, names, max_classes=5, max_per_class=12)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "first 5 of 21 classes" in title and "12 of up to 40 prototypes" in title
    shown = [t.split("\n")[0] for t in _texts(fig) if t.startswith("s")]
    assert len(shown) == 5 * 12
    assert all(sum(s.startswith(f"s{k}/") for s in shown[:12]) == 3 for k in range(4))  # 3 from each scale
    plt.close(fig)


def test_scale_usage_legend_names_the_dilation_rates_and_rejects_a_wrong_count():
    fig = plots.scale_usage_figure(_scale_usage(2), scale_labels=["rate 6", "rate 12", "rate 18", "rate 24"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rate 6", "rate 12", "rate 18", "rate 24"]
    plt.close(fig)
    with pytest.raises(ValueError, match="3 scale_labels for 4 scales"):
        plots.scale_usage_figure(_scale_usage(2), scale_labels=["a", "b", "c"])


def test_confusion_numbers_are_the_row_normalised_percentages_and_many_classes_stay_labelled():
    cm = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
    fig = plots.confusion_figure(cm, ["a", "b", "c"])
    expected = [f"{100 * v / max(sum(row), 1):.0f}" for row in cm.tolist() for v in row]
    assert _texts(fig) == expected
    plt.close(fig)
    fig = plots.confusion_figure(_confusion(150), _names(150))
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert len(shown) >= 50 and shown[0] == "wall"  # thinned to every n-th class, never hidden
    assert not _texts(fig)  # no per-cell numbers in 0.09-inch cells
    plt.close(fig)


def test_predictions_legend_lists_the_classes_present_and_void():
    labels = _label_maps(150, 2)
    fig = plots.predictions_figure(_images(labels), labels, labels, _names(150))
    present = sorted({int(v) for lab in labels for v in np.unique(lab) if v != 255})
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [_names(150)[v] for v in present] + ["void"]
    plt.close(fig)


def test_per_class_iou_bars_hold_the_table_values():
    table = pd.DataFrame({"a": [10.0, 20.0, 30.0], "b": [40.0, 50.0, np.nan]}, index=["x", "y", "z"])
    fig = plots.per_class_iou_figure(table)
    heights = [[p.vertices[:, 1].max() for p in coll.get_paths()] for coll in fig.axes[0].collections]
    assert heights == [[10, 20, 30], [40, 50]]  # per method; the NaN bar is not drawn
    plt.close(fig)


def test_failure_figure_shows_the_most_activated_maps_of_both_classes():
    case = _failure_cases(21, False)[0]
    a, na, b, nb = case["maps"]
    a[7] += 5.0  # the strongest of class a
    fig = plots.failure_figure([case], _names(21), max_maps=2)
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes[3:7]]
    top_a = sorted(np.argsort([-m.max() for m in a])[:2])
    top_b = sorted(np.argsort([-m.max() for m in b])[:2])
    assert 7 in top_a
    assert titles == [f"{_names(21)[case['class']]} · {na[j]}" for j in top_a] + [f"{_names(21)[case['other']]} · {nb[j]}" for j in top_b]
    plt.close(fig)


def _closest_pair(pal):
    return (np.linalg.norm(pal[:, None] - pal[None], axis=-1) + 9 * np.eye(len(pal))).min()


def test_palette_colours_stay_apart_for_many_classes():
    for k in (2, 21, 150):
        pal = plots.class_palette(k)
        assert pal.shape == (k, 3) and _closest_pair(pal) > 0.012, k
    # twice as far apart as hues evenly spaced at one lightness (the naive choice) for ADE20K's 150 classes
    assert _closest_pair(plots.class_palette(150)) > 2 * _closest_pair(np.array(sns.color_palette("husl", 150)))
