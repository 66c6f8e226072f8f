"""Are the explanations true? Deletion and insertion curves, relevance mass and the pointing game
(docs/method.md §13), written here (no attribution library: see there why).

A segmenter decides on its output-stride feature grid (8 × 8 pixels per cell for the trunks here), so the
perturbation unit is one **cell of the model's own output grid** (pixel (y, x) belongs to cell
(min(⌊y/s⌋, h−1), min(⌊x/s⌋, w−1)), h × w the grid of the model's logits, s its output stride, see
`output_stride`): removing single pixels barely moves such a model.

For one image, one class c the model predicts, and one explanation map E (H, W):

- **ranking**: cells by the mean of E over their pixels, largest first; ties broken by a seeded permutation;
- **steps**: `counts[t] = round(t·N/T)` cells for t = 0…T (`STEPS` = T), N the number of cells;
- **baseline**: the normalisation mean colour, i.e. 0 in the normalised input (`data.mean`, `data.std`);
- **deletion**: the first counts[t] ranked cells set to the baseline; **insertion**: all cells at the baseline
  but the first counts[t], which show the image;
- **score**: the class's softmax probability (logits upsampled bilinearly to the input) averaged over the
  pixels the unperturbed model predicts as c; s0 is the unperturbed score;
- **AUC**: the trapezoid of score / s0 over the fraction of cells counts[t] / N. A faithful map gives a low
  deletion AUC and a high insertion AUC.

Localisation against the ground truth (classes present in both prediction and ground truth; void excluded):
**relevance mass**: the share of the min-max normalised map's mass inside the class's ground-truth mask;
**pointing game**: whether the map's maximum lies inside it.

Every perturbed image of one curve goes through the model in batches (`BATCH`, fewer when their upsampled
logits would exceed `LOGIT_BUDGET` or their pixels `PIXEL_BUDGET`); the curves' end points
(the image itself, the all-baseline image) do not depend on the ranking and are scored once per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

STEPS = 10  # points of a curve after the unperturbed one (a step: 10 % of the cells)
BATCH = 32  # perturbed images per forward pass, at most
# and at most this many upsampled logits per forward pass (classes × H × W × images; 512 MB in float32, and as
# much again for the softmax), and at most this many input pixels (the trunk's activations grow with them: about
# 1.5 KB a pixel for ResNet-101 at output stride 8, 3 KB for EM's full-resolution U-Net). Pascal's 513 × 513
# images go 7 at a time, EM's 512 × 512 8, ADE20K's (150 classes at 512 × 683) 2, a Cityscapes image at
# 1024 × 2048 alone. Without them, the 18 perturbed images of a curve went at once: 7 GB at Pascal's size,
# 13 GB at EM's, 10–20 GB of logits alone at Cityscapes' or with 150–182 classes.
LOGIT_BUDGET = 2**27
PIXEL_BUDGET = 2**21
MIN_SHARE = 0.01  # a predicted class is explained when it covers at least this share of the image
MAX_CLASSES = 3  # predicted classes explained per image, largest first (background last)
METRICS = ("deletion_auc", "insertion_auc", "relevance_mass", "pointing_game")


def output_stride(n: int, m: int) -> int:
    """The output stride of a model whose grid has m cells along an input side of n pixels: the power of two
    nearest n / m (8 for the dilated trunks, whose grid has ⌈n/8⌉-ish cells; 1 for the U-Net)."""
    return 2 ** int(round(np.log2(n / m)))


def cell_index(size, grid) -> torch.Tensor:
    """(H, W) long: the feature-grid cell (row-major in `grid` = (h, w)) of each pixel of an input of `size`:
    blocks of stride × stride pixels from the top left, the last row / column of cells taking the rest; a
    cell of the grid that covers no pixel (the padding's) is left out, so the cells are numbered 0…N−1."""
    (H, W), (h, w) = size, grid
    ys = (torch.arange(H) // output_stride(H, h)).clamp_max(h - 1)
    xs = (torch.arange(W) // output_stride(W, w)).clamp_max(w - 1)
    return torch.unique(ys[:, None] * w + xs[None, :], return_inverse=True)[1]


def cell_scores(emap: torch.Tensor, cells: torch.Tensor, n_cells: int) -> torch.Tensor:
    """(n_cells,) mean of the (H, W) map over each cell's pixels."""
    flat = cells.flatten().to(emap.device)
    total = torch.zeros(n_cells, dtype=torch.float64, device=emap.device).index_add_(0, flat, emap.flatten().double())
    return total / torch.bincount(flat, minlength=n_cells).clamp_min(1)


def ranking(scores: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Cell order, largest score first, ties in a seeded random order."""
    perm = torch.as_tensor(rng.permutation(len(scores)), device=scores.device)
    return perm[torch.argsort(-scores[perm], stable=True)]


def step_counts(n_cells: int, steps: int = STEPS) -> np.ndarray:
    return np.rint(np.linspace(0, n_cells, steps + 1)).astype(np.int64)


def perturbed(x, baseline, cells, order, counts, mode: str) -> torch.Tensor:
    """(len(counts), C, H, W): `x` (1, C, H, W) with the first counts[t] cells of `order` set to `baseline`
    (deletion) or with only them shown over the baseline (insertion)."""
    pos = torch.empty_like(order)
    pos[order] = torch.arange(len(order), device=order.device)  # rank of each cell
    first = pos.to(x.device)[cells.to(x.device)][None] < torch.as_tensor(counts, device=x.device)[:, None, None]
    first = first[:, None]  # (T, 1, H, W)
    return torch.where(first, baseline, x) if mode == "deletion" else torch.where(first, x, baseline)


@torch.no_grad()
def class_score(model, xs: torch.Tensor, c: int, mask: torch.Tensor, batch: int = BATCH) -> torch.Tensor:
    """(B,) the class-c probability averaged over `mask` (H, W) for each input of `xs` (B, C, H, W)."""
    m = mask.to(xs.device, torch.float32)
    out = []
    pixels = xs.shape[-2] * xs.shape[-1]
    batch = max(1, min(batch, LOGIT_BUDGET // (model.num_classes * pixels), PIXEL_BUDGET // pixels))
    for chunk in xs.split(batch):
        logits = F.interpolate(model.predict_logits(chunk).float(), size=xs.shape[-2:], mode="bilinear", align_corners=False)
        out.append((logits.softmax(1)[:, c] * m).sum((1, 2)) / m.sum())
    return torch.cat(out)


def auc(curve: np.ndarray, fractions: np.ndarray, s0: float) -> float:
    """Trapezoid of curve / s0 over the fractions of cells."""
    y = np.asarray(curve, float) / s0
    return float(np.sum((y[1:] + y[:-1]) * np.diff(fractions)) / 2)


def curves(model, x, c: int, mask, cells, order, counts, baseline, ends=None) -> dict:
    """Deletion and insertion curves (len(counts),) of class c for one cell order. `ends`: (s0, s_baseline),
    the scores of the image and of the all-baseline image, when already known (they do not depend on order)."""
    if ends is None:
        ends = tuple(float(v) for v in class_score(model, torch.cat([x, torch.zeros_like(x) + baseline]), c, mask))
    s0, sb = ends
    inner = counts[1:-1]
    xs = torch.cat([perturbed(x, baseline, cells, order, inner, m) for m in ("deletion", "insertion")])
    s = class_score(model, xs, c, mask).cpu().numpy() if len(inner) else np.zeros(0)
    k = len(inner)
    return {"deletion": np.concatenate([[s0], s[:k], [sb]]), "insertion": np.concatenate([[sb], s[k:], [s0]]),
            "s0": s0, "ends": ends}


def relevance_mass(emap: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> float:
    """Share of the min-max normalised map's mass over valid pixels that lies inside `gt`."""
    v = emap[valid].double()
    v = (v - v.min()) / (v.max() - v.min()) if float(v.max() - v.min()) > 0 else torch.ones_like(v)
    return float(v[gt[valid]].sum() / v.sum())


def pointing_game(emap: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> float:
    """1 when the map's maximum over valid pixels (the first, row-major) lies inside `gt`, else 0."""
    return float(gt.flatten()[torch.where(valid, emap.double(), -np.inf).flatten().argmax()])


def own_map(model, sim: torch.Tensor, c: int, mask: np.ndarray, size) -> torch.Tensor:
    """The prototype model's explanation of class c as the explanation figure draws it: at every pixel the
    activation of the winning map among the deciding ones (the groups / prototypes that win a predicted
    pixel; winner = largest activation × own-class weight, `maps.winner_map`)."""
    from .maps import class_maps, class_weights, winner_map

    maps, _ = class_maps(model, sim, c, size)
    weights = class_weights(model, c)
    wins = np.bincount(winner_map(maps, weights, mask)[mask], minlength=len(maps))[: len(maps)]
    keep = torch.as_tensor(np.flatnonzero(wins > 0) if wins.any() else np.arange(len(maps)), device=maps.device)
    win = winner_map(maps[keep], weights.to(maps.device)[keep], np.ones(tuple(size), bool))
    return maps[keep].gather(0, torch.as_tensor(win, device=maps.device)[None])[0]


@dataclass
class Explainer:
    """An explanation type: the model it explains and its maps, `maps(x, classes) → (n, H, W)` (None: a
    random or an inverted map, built by `evaluate_faithfulness`)."""

    name: str
    model: object
    maps: object = None
    invert: str | None = None  # the explainer whose map is inverted
    random: bool = False


def explainers(model, gradcam_model=None) -> list[Explainer]:
    """The explanation types compared on a prototype model (`model`) and / or on DeepLab (`gradcam_model`).
    The interpret stage measures DeepLab's once, in the deeplab method's stage (the same seeded images)."""
    from ..interpretability import similarity_maps
    from .gradcam import gradcam_maps

    out = []
    if model is not None:
        def own(x, classes, model=model):
            sim = similarity_maps(model, x)
            pred = predicted(model, x)
            return torch.stack([own_map(model, sim, c, pred == c, x.shape[-2:]) for c in classes])

        out += [Explainer("own", model, own), Explainer("gradcam", model, lambda x, cl: gradcam_maps(model, x, cl)),
                Explainer("inverse", model, invert="own"), Explainer("random", model, random=True)]
    if gradcam_model is not None:
        out += [Explainer("deeplab_gradcam", gradcam_model, lambda x, cl: gradcam_maps(gradcam_model, x, cl)),
                Explainer("deeplab_inverse", gradcam_model, invert="deeplab_gradcam"),
                Explainer("deeplab_random", gradcam_model, random=True)]
    return out


@torch.no_grad()
def predicted(model, x: torch.Tensor) -> np.ndarray:
    """(H, W) the model's prediction on `x` (1, C, H, W), from the logits it is scored with."""
    logits = F.interpolate(model.predict_logits(x).float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits[0].argmax(0).cpu().numpy()


def explained_classes(pred: np.ndarray, class_names) -> list[int]:
    from .maps import _ranked_counts

    return [c for c, n in _ranked_counts(pred, class_names) if n >= MIN_SHARE * pred.size][:MAX_CLASSES]


@dataclass
class FaithfulnessResult:
    metrics: dict  # explainer → {metric: mean, "model", "n"}
    rows: pd.DataFrame  # one row per image, class and explainer
    curves: dict  # explainer → (fractions, mean deletion / s0, mean insertion / s0)


def evaluate_faithfulness(explain: list[Explainer], dataset, data_cfg, device, seed: int, n_images: int,
                          steps: int = STEPS) -> FaithfulnessResult:
    """The curves, AUCs and localisation of every explainer on a seeded subset of `n_images` of `dataset`."""
    from ..data.prepared import VOID
    from ..data.transforms import eval_transform

    rng = np.random.default_rng([seed, 24])
    chosen = sorted(rng.permutation(len(dataset))[: min(n_images, len(dataset))].tolist())
    rows, traces = [], {e.name: ([], [], []) for e in explain}
    for i in chosen:
        image, label = dataset.sample(i)
        x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None].to(device)
        size = tuple(x.shape[-2:])
        gt = torch.as_tensor(np.asarray(label)).to(device)
        if tuple(gt.shape) != size:
            gt = F.interpolate(gt[None, None].float(), size=size, mode="nearest")[0, 0].long()
        valid = gt != VOID
        baseline = torch.zeros_like(x)  # the normalisation mean colour
        by_model: dict[int, tuple] = {}
        maps: dict[str, dict[int, torch.Tensor]] = {}
        done: dict[tuple[str, int], tuple] = {}  # (explainer, class) → (cell order, curves)
        for e in explain:
            if id(e.model) not in by_model:
                e.model.eval()
                pred = predicted(e.model, x)
                cells = cell_index(size, tuple(e.model.predict_logits(x).shape[-2:]))
                by_model[id(e.model)] = (pred, explained_classes(pred, dataset.meta.classes), cells,
                                         int(cells.max()) + 1, {})
            pred, classes, cells, n_cells, ends = by_model[id(e.model)]
            if not classes:
                continue
            if e.random:
                emaps = {c: torch.as_tensor(np.random.default_rng([seed, 24, i, c]).random(n_cells),
                                            device=device)[cells.to(device)] for c in classes}
            elif e.invert:
                emaps = {c: -m for c, m in maps[e.invert].items()}
            else:
                emaps = dict(zip(classes, e.maps(x, classes).float()))
            maps[e.name] = emaps
            counts = step_counts(n_cells, steps)
            for c in classes:
                mask = torch.as_tensor(pred == c, device=device)
                if e.invert:  # the inverted map's order is the map's order reversed (ties too)
                    order = done[(e.invert, c)][0].flip(0)
                else:
                    order = ranking(cell_scores(emaps[c], cells, n_cells), np.random.default_rng([seed, 24, i, c, 1]))
                if e.invert and np.array_equal(counts, n_cells - counts[::-1]):
                    # deleting the first counts[t] cells of the reversed order keeps the first counts[T − t] of
                    # the map's order: the map's insertion curve read backwards, and vice versa
                    base = done[(e.invert, c)][1]
                    cur = {**base, "deletion": base["insertion"][::-1].copy(), "insertion": base["deletion"][::-1].copy()}
                else:
                    cur = curves(e.model, x, c, mask, cells, order, counts, baseline, ends.get(c))
                ends[c] = cur["ends"]
                done[(e.name, c)] = (order, cur)
                frac = counts / n_cells
                row = {"image": dataset.ids[i], "class": dataset.meta.classes[c], "explainer": e.name,
                       "deletion_auc": auc(cur["deletion"], frac, cur["s0"]),
                       "insertion_auc": auc(cur["insertion"], frac, cur["s0"]), "score": cur["s0"]}
                g = gt == c
                if bool((g & valid).any()):
                    row["relevance_mass"] = relevance_mass(emaps[c], g, valid)
                    row["pointing_game"] = pointing_game(emaps[c], g, valid)
                rows.append(row)
                traces[e.name][0].append(cur["deletion"] / cur["s0"])
                traces[e.name][1].append(cur["insertion"] / cur["s0"])
                traces[e.name][2].append(frac)
    table = pd.DataFrame(rows, columns=["image", "class", "explainer", *METRICS, "score"])
    metrics, mean_curves = {}, {}
    for e in explain:
        part = table[table["explainer"] == e.name]
        metrics[e.name] = {"model": "deeplab" if e.name.startswith("deeplab") else "self", "n": len(part),
                           **{k: (round(float(part[k].mean()), 4) if part[k].notna().any() else None) for k in METRICS}}
        if traces[e.name][0]:
            mean_curves[e.name] = tuple(np.mean(t, 0) for t in (traces[e.name][2], *traces[e.name][:2]))
    return FaithfulnessResult(metrics, table, mean_curves)


def headline(metrics: dict) -> dict:
    """The flat summary keys the report and DVCLive read: the own map's, Grad-CAM's and the random ranking's
    AUCs and relevance mass (`faith_<metric>`, `faith_gradcam_<metric>`, `faith_random_<metric>`; on DeepLab
    alone its Grad-CAM is the Grad-CAM and its random ranking the random one)."""
    out = {}
    for key, name in (("faith", "own"), ("faith_gradcam", "gradcam" if "gradcam" in metrics else "deeplab_gradcam"),
                      ("faith_random", "random" if "random" in metrics else "deeplab_random")):
        for k in METRICS:
            if name in metrics and metrics[name][k] is not None:
                out[f"{key}_{k}"] = metrics[name][k]
    return out
