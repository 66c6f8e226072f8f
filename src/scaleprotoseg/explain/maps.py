"""Explaining predictions of a saved prototype model (never retrains): one image, the validation split.

- `explain_input`: for one image, the prediction and, per predicted class (largest first; a class named
  'background' last), the activation map of each of its groups (grouped model) or prototypes, the winner
  per pixel over the **predicted** class mask (so a false positive is explained too) — the group with the
  largest activation × own-class head weight, or the prototype with the largest log-similarity × own-class
  last-layer weight: its contribution to the class logit — and the prototypes that decided it; optionally
  the Grad-CAM map of a DeepLab baseline for the same class (`gradcam`).
- `explain_prediction`: the same on a seeded validation image, with its ground truth.
- `nearest_prototypes`: for a few seeded pixels, the k most similar prototypes **within each scale** (the
  scales are different embedding spaces, so distances are never compared across them) with source patches.
- `failure_cases`: the lowest-IoU classes, the class each is most confused with, and the activations of
  both on the validation image where that confusion covers most pixels.

Prototype labels are the gallery's (`models.prototypes.prototype_names`: 's<scale>/<rank within class and
scale>'); groups are 'g<k>'. `python -m scaleprotoseg.explain` explains an image file (see `image` and `__main__`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import plots
from ..data.prepared import VOID
from ..data.transforms import eval_transform
from ..interpretability import similarity_maps, upsample
from . import figures

MAX_DECIDING = 6  # source patches shown per explained class


def _inputs(dataset, i, data_cfg, device):
    image, label = dataset.sample(i)
    x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None].to(device)
    return image, label, x


def class_members(model, c: int) -> tuple[torch.Tensor, list[str]]:
    """Class c's prototypes (global indices, ascending) and their labels 's<scale>/<m>' (the gallery's names)."""
    from ..models.prototypes import prototype_names

    idx = torch.nonzero(model.prototypes.proto_class == c).flatten().cpu()
    classes = [str(k) for k in range(model.num_classes)]
    names = prototype_names(model, classes)
    return idx, [names[int(p)][len(classes[c]) + 1:] for p in idx]


@torch.no_grad()
def class_maps(model, sim: torch.Tensor, c: int, size) -> tuple[torch.Tensor, list[str]]:
    """(n, H, W) activation maps of class c's groups (exp(W_c · a_c)) or prototypes (log-similarity), and
    their labels ('g<k>' or 's<scale>/<m>')."""
    gh = model.group_head
    if gh is not None:
        G = gh.groups
        g = gh.group_activations(sim[None])[0][c * G : (c + 1) * G]
        return upsample(g, size), [f"g{k}" for k in range(G)]
    idx, labels = class_members(model, c)
    return upsample(sim[idx.to(sim.device)], size), labels


def class_weights(model, c: int) -> torch.Tensor:
    """(n,) own-class weight of each map of `class_maps` in class c's logit (head or last-layer entry)."""
    gh = model.group_head
    if gh is not None:
        return gh.head[c, c * gh.groups : (c + 1) * gh.groups].detach()
    idx, _ = class_members(model, c)
    return model.last_layer[c, idx.to(model.last_layer.device)].detach()


@torch.no_grad()
def predict_from_sim(model, sim: torch.Tensor, size) -> np.ndarray:
    logits = model.group_head(sim[None]) if model.group_head is not None else torch.einsum("phw,kp->khw", sim, model.last_layer)[None]
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0).cpu().numpy()


@dataclass
class ClassExplanation:
    """Why one class was predicted where it was."""

    index: int
    name: str
    share: float  # % of the image's pixels predicted as this class
    mask: np.ndarray  # (H, W) bool: the predicted pixels
    maps: np.ndarray  # (n, H, W) activation of each group / prototype of the class
    labels: list[str]  # 'g<k>' or 's<scale>/<m>'
    weights: np.ndarray  # (n,) own-class weight of each map in the class logit
    winner: np.ndarray  # (H, W) int: the winning map inside `mask`, -1 outside
    wins: np.ndarray  # (n,) % of the predicted pixels each map wins
    deciding: list[dict] = field(default_factory=list)  # {prototype, label, group, weight, wins}
    gradcam: np.ndarray | None = None  # (H, W) in [0, 1]


@dataclass
class Explanation:
    image: np.ndarray  # (H, W, 3) uint8, as explained
    pred: np.ndarray  # (H, W) predicted class per pixel
    class_names: list[str]
    grouped: bool
    classes: list[ClassExplanation]
    label: np.ndarray | None = None  # ground truth, when known
    n_prototypes: int = 0  # the model's prototype count (source patches must match it)

    def summary(self) -> dict:
        """Plain-data digest (JSON-ready) of the explanation."""
        return {
            "size": list(self.pred.shape),
            "model": "groups" if self.grouped else "prototypes",
            "predicted_classes": {self.class_names[k]: round(100 * float(n) / self.pred.size, 2)
                                  for k, n in _ranked_counts(self.pred, self.class_names)},
            "explained": [{
                "class": e.name, "index": e.index, "predicted_%": round(e.share, 2),
                "wins_%": {lab: round(float(w), 2) for lab, w in zip(e.labels, e.wins)},
                "deciding_prototypes": e.deciding, "gradcam": e.gradcam is not None,
            } for e in self.classes],
        }


def _ranked_counts(pred: np.ndarray, class_names) -> list[tuple[int, int]]:
    """(class, pixel count) of every predicted class, largest first, a class named 'background' last."""
    counts = np.bincount(pred.ravel(), minlength=len(class_names))
    present = [int(k) for k in np.nonzero(counts)[0]]
    return [(k, int(counts[k])) for k in sorted(present, key=lambda k: (class_names[k] == "background", -counts[k], k))]


def winner_map(maps: torch.Tensor, weights: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """(H, W) index of the largest map × weight inside `mask`, -1 outside."""
    win = (maps * weights.to(maps)[:, None, None]).argmax(0).cpu().numpy()
    return np.where(mask, win, -1)


def deciding_prototypes(model, c: int, wins: np.ndarray, labels: list[str], weights: np.ndarray,
                        limit: int = MAX_DECIDING) -> list[dict]:
    """The prototypes behind class c's winners, most pixels first: the winning prototypes themselves, or
    (grouped model) the prototypes with a non-zero weight in each winning group, largest weight first."""
    out: list[dict] = []
    idx, plabels = class_members(model, c)
    gh = model.group_head
    for k in np.argsort(-wins, kind="stable"):
        if wins[k] <= 0 or len(out) >= limit:
            break
        if gh is None:
            out.append({"prototype": int(idx[k]), "label": labels[k], "group": None,
                        "weight": round(float(weights[k]), 4), "wins_%": round(float(wins[k]), 2)})
            continue
        w, slots, valid = gh.weight[c, k].detach().cpu(), gh.index[c].cpu(), gh.valid[c].cpu()
        members = [(float(w[j]), int(slots[j])) for j in range(len(slots)) if valid[j] and w[j] > 0]
        for weight, p in sorted(members, key=lambda t: (-t[0], t[1]))[: max(limit - len(out), 0)]:
            out.append({"prototype": p, "label": plabels[int((idx == p).nonzero()[0, 0])], "group": labels[k],
                        "weight": round(weight, 4), "wins_%": round(float(wins[k]), 2)})
    return out


@torch.no_grad()
def explain_input(model, image: np.ndarray, x: torch.Tensor, class_names, size=None, max_classes: int = 3,
                  label: np.ndarray | None = None, gradcam_model=None) -> Explanation:
    """Explain the prediction of `model` on one normalised input `x` (1, 3, h, w) of `image` (H, W, 3),
    at `size` (default: the image's). At most `max_classes` predicted classes are explained."""
    size = tuple(size or image.shape[:2])
    sim = similarity_maps(model, x)
    pred = predict_from_sim(model, sim, size)
    chosen = _ranked_counts(pred, class_names)[:max_classes]
    cams = None
    if gradcam_model is not None and chosen:
        from .gradcam import gradcam_maps

        cams = gradcam_maps(gradcam_model, x, [c for c, _ in chosen])
        cams = upsample(cams, size).clamp(0, 1).cpu().numpy() if tuple(cams.shape[-2:]) != size else cams.cpu().numpy()
    out = []
    for j, (c, n) in enumerate(chosen):
        maps, labels = class_maps(model, sim, c, size)
        weights = class_weights(model, c)
        mask = pred == c
        winner = winner_map(maps, weights, mask)
        wins = 100 * np.bincount(winner[mask], minlength=len(labels))[: len(labels)] / max(int(mask.sum()), 1)
        weights = weights.cpu().numpy()
        out.append(ClassExplanation(c, str(class_names[c]), 100 * n / pred.size, mask, maps.cpu().numpy(), labels,
                                    weights, winner, wins, deciding_prototypes(model, c, wins, labels, weights),
                                    None if cams is None else cams[j]))
    return Explanation(np.asarray(image), pred, [str(k) for k in class_names], model.group_head is not None, out, label,
                       model.prototypes.num_prototypes)


def _pick_image_and_class(dataset, rng, background: int = 0):
    """A seeded validation image and its largest non-background class."""
    order = rng.permutation(len(dataset))
    for i in order:
        label = dataset.label(int(i))
        counts = np.bincount(label[label != VOID].ravel(), minlength=len(dataset.meta.classes))
        counts[background] = 0
        if counts.max() > 0:
            return int(i), int(counts.argmax())
    return int(order[0]), background


@torch.no_grad()
def explain_prediction(model, dataset, data_cfg, device, seed: int, method: str, gradcam_model=None, patches=None,
                       max_classes: int = 2):
    """The explanation figure of a seeded validation image (one with a non-background class), its ground
    truth beside the prediction. `gradcam_model`: a DeepLab of the same classes, for the Grad-CAM column;
    `patches`: `artifacts.read_patches(project_dir)`, for the deciding prototypes' source patches."""
    rng = np.random.default_rng([seed, 50])
    i, _ = _pick_image_and_class(dataset, rng)
    image, label, x = _inputs(dataset, i, data_cfg, device)
    expl = explain_input(model, image, x, dataset.meta.classes, label.shape, max_classes, label=label,
                         gradcam_model=gradcam_model)
    return figures.explanation_figure(expl, patches, title=f"{method}: why each class is predicted ({dataset.ids[i]})")


@torch.no_grad()
def nearest_prototypes(model, dataset, data_cfg, device, seed: int, patches, boxes, names, n_pixels: int = 3, k: int = 3):
    rng = np.random.default_rng([seed, 55])
    i, _ = _pick_image_and_class(dataset, rng)
    image, label, x = _inputs(dataset, i, data_cfg, device)
    feats = model.features(x, training=False)
    d = model.prototypes.distances(feats)[0]  # (P, h, w)
    h, w = d.shape[-2:]
    H, W = label.shape
    ys, xs = np.nonzero(label != VOID)
    pick = rng.choice(len(ys), size=min(n_pixels, len(ys)), replace=False)
    scale = model.prototypes.proto_scale.cpu()
    rows = []
    for j in pick:
        y, xx = int(ys[j]), int(xs[j])
        fy, fx = min(int(y * h / H), h - 1), min(int(xx * w / W), w - 1)
        per_scale = []
        for s in range(model.prototypes.num_scales):
            idx = torch.nonzero(scale == s).flatten()
            dist = d[idx.to(d.device), fy, fx]
            order = torch.argsort(dist)[:k]
            per_scale.append([(int(idx[o]), float(dist[o])) for o in order])
        rows.append(((y, xx), dataset.meta.classes[label[y, xx]], per_scale))
    rates = getattr(model.aspp, "rates", None) if getattr(model, "multiscale", False) else None
    return figures.nearest_figure(image, rows, patches, boxes, names, title=f"Nearest prototypes per scale ({dataset.ids[i]})",
                                          rates=rates)


@torch.no_grad()
def failure_cases(model, dataset, data_cfg, device, n_classes: int = 2, max_images: int = 0):
    """Lowest-IoU classes, their most confused class and the activations of both on the worst image."""
    K = model.num_classes
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    cm = np.zeros((K, K), np.int64)
    confusions = np.zeros((n, K, K), np.int64)
    for i in range(n):
        _, label, x = _inputs(dataset, i, data_cfg, device)
        pred = predict_from_sim(model, similarity_maps(model, x), label.shape)
        valid = label != VOID
        m = np.bincount(label[valid].astype(np.int64) * K + pred[valid], minlength=K * K).reshape(K, K)
        cm += m
        confusions[i] = m
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    worst = [int(c) for c in np.argsort(np.nan_to_num(iou, nan=2.0))[:n_classes] if np.isfinite(iou[c])]
    cases = []
    for c in worst:
        off = cm[c].copy()
        off[c] = 0
        if off.sum() == 0:  # low IoU from false positives only: the class most predicted in its place
            off = cm[:, c].copy()
            off[c] = 0
        other = int(off.argmax())
        img = int(confusions[:, c, other].argmax() if confusions[:, c, other].any() else confusions[:, other, c].argmax())
        image, label, x = _inputs(dataset, img, data_cfg, device)
        sim = similarity_maps(model, x)
        pred = predict_from_sim(model, sim, label.shape)
        a, na = class_maps(model, sim, c, label.shape)
        b, nb = class_maps(model, sim, other, label.shape)
        cases.append({"class": c, "other": other, "iou": 100 * iou[c], "image": image, "label": label, "pred": pred,
                      "maps": (a.cpu().numpy(), na, b.cpu().numpy(), nb), "id": dataset.ids[img]})
    return plots.failure_figure(cases, dataset.meta.classes) if cases else plots.message_figure("No class with pixels.")
