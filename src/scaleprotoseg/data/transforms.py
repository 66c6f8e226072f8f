"""Image/label transforms (docs/method.md §6), written so image and mask stay aligned.

Training: random rescale by f ~ U(lo, hi) (image bilinear, label nearest) → pad bottom/right to the crop
(image with the mean colour, which normalises to 0; label with void) → random crop → horizontal flip with
p = 0.5 → ImageNet normalisation. Evaluation: optional resize of the image only (Pascal 513×513, ADE20K
short side 512); the label stays at native resolution and logits are upsampled to it.
"""

from __future__ import annotations

import numpy as np
import torch

from .prepared import VOID


def rescale(image: np.ndarray, label: np.ndarray | None, factor: float):
    """Resize by `factor` to (⌊h·f⌋, ⌊w·f⌋): image bilinear, label nearest."""
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(1, int(w * factor)), max(1, int(h * factor)))  # PIL wants (W, H)
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    if label is not None:
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    return image, label


def normalise(image: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 HxWx3 → float CxHxW, scaled to [0, 1] then standardised."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def train_transform(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop: int,
    scale_range: tuple[float, float],
    flip: bool,
    mean,
    std,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented training crop: (image 3×crop×crop float, label crop×crop uint8 with void = 255; the
    labels travel to the device as bytes and become int64 there)."""
    factor = rng.uniform(*scale_range)
    image, label = rescale(image, label, factor)
    h, w = label.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        fill = np.round(np.asarray(mean) * 255).astype(np.uint8)
        padded = np.empty((h + ph, w + pw, 3), np.uint8)
        padded[:] = fill
        padded[:h, :w] = image
        image = padded
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=VOID)
    h, w = label.shape
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    image = image[y : y + crop, x : x + crop]
    label = label[y : y + crop, x : x + crop]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return normalise(image, mean, std), torch.from_numpy(np.array(label, dtype=np.uint8))


def eval_input_size(h: int, w: int, eval_size, eval_short_side) -> tuple[int, int]:
    """The (H, W) the model sees at evaluation for a native h×w image."""
    if eval_size is not None:
        return int(eval_size[0]), int(eval_size[1])
    if eval_short_side is not None:
        s = eval_short_side / min(h, w)
        return int(round(h * s)), int(round(w * s))
    return h, w


def eval_transform(image: np.ndarray, eval_size, eval_short_side, mean, std) -> torch.Tensor:
    from PIL import Image

    h, w = image.shape[:2]
    th, tw = eval_input_size(h, w, eval_size, eval_short_side)
    if (th, tw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((tw, th), Image.BILINEAR))
    return normalise(image, mean, std)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour downsample of (B, H, W) labels to feature resolution (as PIL NEAREST: pixel centres)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].long()


def present_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) long: per image the classes that occur in `labels` (B, H, W), ascending, padded with −1 to the
    batch's largest count C (at least 1). Meant for host-side labels (the data loader computes it), so that
    the diversity loss works on the classes of each image without a device synchronisation."""
    B = labels.shape[0]
    flat = labels.reshape(B, -1).long()
    hits = torch.zeros(B, max(num_classes, 1) + 1, dtype=torch.bool, device=labels.device)
    hits.scatter_(1, flat.clamp(max=num_classes), True)  # void and other values land in the last column
    hits = hits[:, :num_classes]
    C = max(int(hits.sum(1).max()) if B else 0, 1)
    k = torch.arange(num_classes, device=labels.device)
    ranked = torch.where(hits, k, num_classes + k).sort(1).values[:, :C]
    return torch.where(ranked < num_classes, ranked, -1)
