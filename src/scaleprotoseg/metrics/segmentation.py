"""Segmentation metrics with the protocol of docs/method.md §7 (mIoU).

A dataset-level K×K confusion matrix at label resolution (rows = ground truth, columns = prediction)
accumulates every image; void ground-truth pixels are dropped before counting, so they count in neither
intersection nor union. IoU_c = TP / (TP + FP + FN); mIoU averages the classes whose union is non-zero.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, void: int = 255) -> torch.Tensor:
    """(K, K) int64 counts for any-shaped `pred`/`target` of class indices; void targets ignored."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = target != void
    idx = target[keep].long() * num_classes + pred[keep].long()  # a uint8 label times K would wrap past 255
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm) -> tuple[np.ndarray, float]:
    """Per-class IoU in percent (NaN where the union is 0) and their mean over the defined classes."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, 100.0 * tp / union, np.nan)
    valid = union > 0
    return iou, float(iou[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(100.0 * np.trace(cm) / total) if total else float("nan")


def summarise(cm, class_names) -> dict:
    """The metrics JSON of one method: mIoU, pixel accuracy and per-class IoU (percent)."""
    iou, miou = iou_from_confusion(cm)
    return {
        "miou": round(miou, 4),
        "pixel_accuracy": round(pixel_accuracy(cm), 4),
        "iou": {name: (None if np.isnan(v) else round(float(v), 4)) for name, v in zip(class_names, iou)},
    }
