"""Figures that explain predictions, drawn from a saved model and the validation split (never retrains).

- `explain_prediction`: image, ground truth, prediction; for one class, the activation map of each of its
  groups (grouped model) or prototypes, and the summary view: the class's pixels coloured by the winning
  group (the largest group activation × its own-class head weight) or prototype, over the image.
- `nearest_prototypes`: for a few seeded pixels, the k most similar prototypes **within each scale** (the
  scales are different embedding spaces, so distances are never compared across them) with source patches.
- `failure_cases`: the lowest-IoU classes, the class each is most confused with, and the activations of
  both on the validation image where that confusion covers most pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import plots
from .data.prepared import VOID
from .data.transforms import eval_transform
from .interpretability import similarity_maps, upsample


def _inputs(dataset, i, data_cfg, device):
    image, label = dataset.sample(i)
    x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None].to(device)
    return image, label, x


@torch.no_grad()
def class_maps(model, sim: torch.Tensor, c: int, size) -> tuple[torch.Tensor, list[str]]:
    """(n, H, W) activation maps of class c's groups (weighted by their own-class head weight, the
    quantity whose arg-max decides the summary view) or prototypes, and their labels."""
    gh = model.group_head
    if gh is not None:
        G = gh.groups
        g = gh.group_activations(sim[None])[0][c * G : (c + 1) * G]
        return upsample(g, size), [f"group {k}" for k in range(G)]
    idx = torch.nonzero(model.prototypes.proto_class == c).flatten()
    scale = model.prototypes.proto_scale[idx].tolist()
    return upsample(sim[idx], size), [f"prototype s{s}/{m}" for m, s in enumerate(scale)]


@torch.no_grad()
def predict_from_sim(model, sim: torch.Tensor, size) -> np.ndarray:
    logits = model.group_head(sim[None]) if model.group_head is not None else torch.einsum("phw,kp->khw", sim, model.last_layer)[None]
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0).cpu().numpy()


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
def explain_prediction(model, dataset, data_cfg, device, seed: int, method: str):
    rng = np.random.default_rng([seed, 50])
    i, c = _pick_image_and_class(dataset, rng)
    image, label, x = _inputs(dataset, i, data_cfg, device)
    sim = similarity_maps(model, x)
    size = label.shape
    pred = predict_from_sim(model, sim, size)
    maps, names = class_maps(model, sim, c, size)
    if model.group_head is not None:
        head = model.group_head.head[c, c * model.group_head.groups : (c + 1) * model.group_head.groups]
        win = (maps * head[:, None, None]).argmax(0).cpu().numpy()
    else:
        win = maps.argmax(0).cpu().numpy()
    classes = dataset.meta.classes
    return plots.explanation_figure(image, label, pred, maps.cpu().numpy(), names, win, label == c, classes,
                                    title=f"{method}: why '{classes[c]}'? ({dataset.ids[i]})")


@torch.no_grad()
def nearest_prototypes(model, dataset, data_cfg, device, seed: int, patches, boxes, names, n_pixels: int = 3, k: int = 3):
    rng = np.random.default_rng([seed, 55])
    i, c = _pick_image_and_class(dataset, rng)
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
    return plots.nearest_figure(image, rows, patches, boxes, names, title=f"Nearest prototypes per scale ({dataset.ids[i]})")


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
