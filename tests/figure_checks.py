"""Layout checks for matplotlib figures: text that overlaps other text, leaves the canvas, or lies in
another panel's plotting area.

`text_problems(fig)` draws the figure with the Agg renderer and records every text artist that is really
drawn (visible, non-empty, inside the axis view for tick labels): titles, suptitles, axis and tick labels,
legend texts, colour-bar labels, annotations and figure texts. Boxes are the artists' axis-aligned window
extents in display pixels, so a rotated label is judged by its enclosing rectangle (conservative).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.transforms import Bbox

EPS_AREA = 1.0  # px²: intersections smaller than this are rounding, not overlap
EPS_EDGE = 0.5  # px a box may poke past the canvas edge


@contextmanager
def _recording_texts(drawn: list):
    """Record, in drawing order, every Text whose draw() gets past matplotlib's own visibility checks."""
    original = Text.draw

    def draw(self, renderer):
        if self.get_visible() and self.get_text() != "":
            drawn.append(self)
        return original(self, renderer)

    Text.draw = draw
    try:
        yield
    finally:
        Text.draw = original


def _areas(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection areas of boxes a (n, 4) and b (m, 4), each (x0, y0, x1, y1)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def _axes_names(fig) -> dict:
    """id(axes) → a readable name: panel 3 'its title', or colour bar."""
    names, panels = {}, [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    for i, ax in enumerate(panels):
        title = ax.get_title() or ax.get_title("left") or ax.get_title("right")
        names[id(ax)] = f"panel {i}" + (f" {title.splitlines()[0]!r}" if title else "")
    for ax in fig.axes:
        if id(ax) not in names:
            names[id(ax)] = "colour bar"
    return names


def _roles(fig, axes_names: dict) -> dict:
    """id(text) → (role description, owning axes or None, owning legend or None)."""
    roles: dict[int, tuple[str, object, object]] = {}
    for ax in fig.axes:
        where = axes_names[id(ax)]
        for axis, xy in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            for tick in axis.majorTicks + axis.minorTicks:  # the ticks made so far; drawing never reads others
                for t in (tick.label1, tick.label2):
                    roles[id(t)] = (f"{xy} tick label of {where}", ax, None)
        roles[id(ax.xaxis.label)] = (f"x label of {where}", ax, None)
        roles[id(ax.yaxis.label)] = (f"y label of {where}", ax, None)
        for title in (ax.title, ax._left_title, ax._right_title):
            roles[id(title)] = (f"title of {where}", ax, None)
        for t in ax.texts:
            roles[id(t)] = (f"text in {where}", ax, None)
        leg = ax.get_legend()
        if leg is not None:
            for t in leg.get_texts() + [leg.get_title()]:
                roles[id(t)] = (f"legend text of {where}", ax, leg)
    for leg in fig.legends:
        for t in leg.get_texts() + [leg.get_title()]:
            roles[id(t)] = ("figure legend text", None, leg)
    for t in fig.texts:
        roles[id(t)] = ("figure text", None, None)
    for attr, role in (("_suptitle", "suptitle"), ("_supxlabel", "figure x label"), ("_supylabel", "figure y label")):
        t = getattr(fig, attr, None)
        if t is not None:
            roles[id(t)] = (role, None, None)
    return roles


def _covered_areas(ax, renderer) -> list[Bbox]:
    """Where an axes paints over what was drawn before it: its background patch when drawn, else its images."""
    if ax.axison and ax.get_frame_on() and ax.patch.get_visible() and ax.patch.get_facecolor()[3] > 0:
        return [ax.patch.get_window_extent(renderer)]
    return [im.get_window_extent(renderer) for im in ax.images if im.get_visible()]


def text_problems(fig) -> list[str]:
    """Every overlapping text pair, text off the canvas and text in another axes' plotting area, as sentences."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    drawn: list[Text] = []
    with _recording_texts(drawn):
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_names = _axes_names(fig)
    roles = _roles(fig, axes_names)

    seen, items = set(), []
    for t in drawn:
        if id(t) in seen:
            continue
        seen.add(id(t))
        role, ax, leg = roles.get(id(t), ("text", getattr(t, "axes", None), None))
        box = t.get_window_extent(renderer)
        if box.width <= 0 or box.height <= 0:
            continue
        label = t.get_text().replace("\n", " ")
        items.append((f"{role} {label[:40]!r}", box, ax, leg))

    problems = []
    canvas = fig.bbox
    for name, box, _, _ in items:
        if (box.x0 < canvas.x0 - EPS_EDGE or box.y0 < canvas.y0 - EPS_EDGE
                or box.x1 > canvas.x1 + EPS_EDGE or box.y1 > canvas.y1 + EPS_EDGE):
            problems.append(f"{name} leaves the canvas (text box {_fmt(box)}, canvas {_fmt(canvas)})")

    xy = np.array([[b.x0, b.y0, b.x1, b.y1] for _, b, _, _ in items]).reshape(-1, 4)
    inter = _areas(xy, xy)
    for i, j in zip(*np.nonzero(np.triu(inter > EPS_AREA, 1))):
        problems.append(f"{items[i][0]} overlaps {items[j][0]} ({inter[i, j]:.0f} px²)")

    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    legend_boxes = [(lg, lg.get_window_extent(renderer)) for lg in legends if lg.get_visible()]
    for lg, lbox in legend_boxes:
        if not lg.get_frame_on():
            continue  # a frameless legend hides nothing beyond its texts, checked above
        hit = _areas(np.array([[lbox.x0, lbox.y0, lbox.x1, lbox.y1]]), xy)[0]
        for k in np.flatnonzero(hit > EPS_AREA):
            if items[k][3] is not lg:
                problems.append(f"the legend box of {_legend_owner(lg, axes_names)} hides {items[k][0]}")

    order = _draw_order(fig)
    owned = [(n, b, ax) for n, b, ax, _ in items]
    owned += [(f"the legend of {_legend_owner(lg, axes_names)}", lbox, lg.axes if lg.isaxes else None)
              for lg, lbox in legend_boxes]
    oxy = np.array([[b.x0, b.y0, b.x1, b.y1] for _, b, _ in owned]).reshape(-1, 4)
    for other in fig.axes:
        if not other.get_visible():
            continue
        for area in _covered_areas(other, renderer):
            hit = _areas(oxy, np.array([[area.x0, area.y0, area.x1, area.y1]]))[:, 0]
            for k in np.flatnonzero(hit > EPS_AREA):
                name, _, ax = owned[k]
                if ax is other:
                    continue
                hidden = ax is not None and order.get(id(other), -1) > order.get(id(ax), -1)
                verb = "is hidden behind" if hidden else "lies over"
                problems.append(f"{name} {verb} the plotting area of {axes_names[id(other)]} ({hit[k]:.0f} px²)")
    return problems


def _draw_order(fig) -> dict:
    """id(axes) → its position in the figure's drawing order (zorder, then insertion order)."""
    children = [a for a in fig.get_children() if a in fig.axes]
    ranked = sorted(enumerate(children), key=lambda p: (p[1].get_zorder(), p[0]))
    return {id(a): k for k, (_, a) in enumerate(ranked)}


def _legend_owner(lg: Legend, axes_names: dict) -> str:
    return axes_names.get(id(lg.axes), "a panel") if lg.isaxes else "the figure"


def _fmt(b: Bbox) -> str:
    return f"x {b.x0:.0f}..{b.x1:.0f}, y {b.y0:.0f}..{b.y1:.0f} px"


def assert_clean(fig) -> None:
    """Raise AssertionError listing every text problem of `fig` (none: return quietly)."""
    problems = text_problems(fig)
    if problems:
        raise AssertionError(f"{len(problems)} text layout problem(s):\n  " + "\n  ".join(problems))
