"""Whole-image evaluation (docs/method.md §7, with the fixes of §10).

The model sees each validation image (resized when the preset says so), its logits are upsampled
bilinearly to the label's native size, and the arg-max is accumulated into one dataset-level confusion
matrix. Only what the metric needs is computed at full resolution: the (K, H, W) logits of one image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .metrics.segmentation import confusion_matrix
from .progress import tqdm


@dataclass
class EvalResult:
    confusion: np.ndarray
    examples: dict[int, np.ndarray] = field(default_factory=dict)  # image index → predicted label map
    n_images: int = 0


@torch.no_grad()
def predict(model, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Predicted class map (B, H, W) at `size` for a normalised batch `x`."""
    logits = model.predict_logits(x)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device, keep=(), progress: bool = True, desc: str = "evaluate") -> EvalResult:
    """Accumulate the confusion matrix over `loader`; keep the predictions of the image indices in `keep`."""
    was_training = model.training
    model.eval()
    keep = set(int(i) for i in keep)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    result = EvalResult(np.zeros((num_classes, num_classes), np.int64))
    for xs, ys, idx in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        batches = [(xs, ys, idx)] if isinstance(xs, torch.Tensor) else [
            (x[None], y[None], i[None]) for x, y, i in zip(xs, ys, idx)
        ]
        for x, y, i in batches:
            y = y.to(device)
            pred = predict(model, x.to(device), tuple(y.shape[-2:]))
            cm += confusion_matrix(pred, y, num_classes)
            result.n_images += len(i)
            for j, k in enumerate(i.tolist()):
                if k in keep:
                    result.examples[k] = pred[j].cpu().numpy().astype(np.uint8)
    model.train(was_training)
    result.confusion = cm.cpu().numpy()
    return result
