"""Prototype projection ("push"), de-duplication and ProtoSeg's pruning (docs/method.md §5).

Projection is one pass over the projection split in evaluation mode (whole images, no augmentation). For
every image the distances (P, h·w) are masked **exactly** (a boolean `where` with +inf, never `+1e10`) to the
feature cells eligible for the prototype's class, and a running minimum keeps, per
prototype, the distance, the image, the position and the feature vector of its own scale at that position;
no extra forward pass per prototype. With the minimum comes the high-activation box on that image: the
bounding box of the class cells whose similarity is at least the 95th percentile of the prototype's
similarity over the class cells (feature resolution, scaled to image pixels). A prototype whose class has no
eligible pixel keeps its vector and is reported by name. De-duplication removes exact duplicates (same scale,
same vector) and keeps the lowest index; the class/scale tables follow (they are buffers).

Eligibility rule (`rule`), as the released pipelines have it:
- `nearest`: the cell's nearest-downsampled label is the class (ScaleProtoSeg everywhere; ProtoSeg's faster
  push on ADE20K and COCO-Stuff);
- `any`: **any** full-resolution label pixel inside the cell is the class (ProtoSeg's push on Pascal VOC and
  Cityscapes). Pixel (i, j) of an H×W label lies in cell (⌊i / (H/h)⌋, ⌊j / (W/w)⌋) of the h×w feature map,
  the released mapping, computed in float64 as it is there.

Pruning (ProtoSeg only, ProtoPNet's rule): for each prototype, the k images whose best non-void cell is
nearest; a patch "matches" if any pixel of its cell has the prototype's class; prototypes with fewer than
`threshold` matches among their k patches are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .data.prepared import VOID, PreparedDataset
from .data.transforms import downsample_labels
from .models.prototypes import PrototypeSegmenter, log_similarity
from .progress import tqdm
from .sections import PROJECTION_RULES

PATCH_SIZE = 64


@dataclass
class Projection:
    vectors: torch.Tensor  # (P, D) projected vectors (unchanged where no eligible pixel)
    distance: torch.Tensor  # (P,) distance to the chosen feature vector (inf: no eligible pixel)
    image: torch.Tensor  # (P,) index of the source image in the split (−1: none)
    position: torch.Tensor  # (P, 2) (row, col) at feature resolution
    feature_size: torch.Tensor  # (P, 2) (h, w) of the source image's feature map
    box: torch.Tensor  # (P, 4) high-activation box (r0, c0, r1, c1), feature cells, inclusive

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.distance)


def _batches(loader):
    for xs, ys, idx in loader:
        if isinstance(xs, torch.Tensor):
            for j in range(len(idx)):
                yield xs[j : j + 1], ys[j : j + 1], int(idx[j])
        else:
            for x, y, i in zip(xs, ys, idx.tolist()):
                yield x[None], y[None], int(i)


RULES = PROJECTION_RULES  # the eligibility rules (the config checks the same list)


def cell_index(n: int, cells: int, device=None) -> torch.Tensor:
    """(n,) the feature cell of each of n pixels along one axis: ⌊i / (n / cells)⌋ in float64 (the released
    push's `int(i / patch_size)`), so each cell owns a contiguous run of pixels."""
    i = torch.arange(n, dtype=torch.float64, device=device)
    return torch.div(i, n / cells, rounding_mode="floor").long().clamp(max=cells - 1)


def class_cells(labels: torch.Tensor, size: tuple[int, int], num_classes: int, rule: str) -> torch.Tensor:
    """(K, h·w) bool: cell (r, c) is eligible for class k under `rule` ('nearest' or 'any'; see the module
    docstring). `labels` is one (H, W) label map at full resolution; void is never eligible."""
    h, w = size
    if rule == "nearest":
        lab = downsample_labels(labels[None], (h, w)).reshape(h * w)
        return lab[None, :] == torch.arange(num_classes, device=labels.device)[:, None]
    if rule != "any":
        raise ValueError(f"projection rule {rule!r} is not one of {list(RULES)}")
    H, W = labels.shape
    cell = cell_index(H, h, labels.device)[:, None] * w + cell_index(W, w, labels.device)[None, :]  # (H, W)
    lab = labels.long()
    ok = (lab >= 0) & (lab < num_classes)  # void (255) and anything outside the classes never qualify
    flat = torch.zeros(num_classes * h * w, dtype=torch.bool, device=labels.device)
    flat[(lab * (h * w) + cell)[ok]] = True
    return flat.view(num_classes, h * w)


@torch.no_grad()
def find_nearest(model: PrototypeSegmenter, loader, device, progress: bool = True, rule: str = "nearest") -> Projection:
    """The single projection pass: per prototype, the nearest eligible feature vector over the split."""
    model.eval()
    protos = model.prototypes
    P, S, D = protos.num_prototypes, protos.num_scales, protos.dim
    cls, scale = protos.proto_class, protos.proto_scale
    best = Projection(
        vectors=protos.vectors.detach().clone(),
        distance=torch.full((P,), torch.inf, device=device),
        image=torch.full((P,), -1, dtype=torch.long, device=device),
        position=torch.zeros(P, 2, dtype=torch.long, device=device),
        feature_size=torch.zeros(P, 2, dtype=torch.long, device=device),
        box=torch.zeros(P, 4, dtype=torch.long, device=device),
    )
    arange_d = torch.arange(D, device=device)
    for x, y, i in tqdm(_batches(loader), total=len(loader.dataset), desc="project", disable=not progress, leave=False):
        feats = model.features(x.to(device), training=False)  # (1, S·D, h, w)
        h, w = feats.shape[-2:]
        d = protos.distances(feats)[0].reshape(P, h * w)
        eligible = class_cells(y[0].to(device), (h, w), protos.num_classes, rule)[cls]  # (P, N): exact mask
        dist, pos = torch.where(eligible, d, torch.inf).min(1)
        better = dist < best.distance
        vec = feats[0].reshape(S, D, h * w)[scale[:, None], arange_d[None, :], pos[:, None]]  # (P, D)
        box = _activation_box(log_similarity(d), eligible, h, w)
        best.vectors = torch.where(better[:, None], vec, best.vectors)
        best.distance = torch.where(better, dist, best.distance)
        best.image = torch.where(better, torch.full_like(best.image, i), best.image)
        rc = torch.stack([pos // w, pos % w], 1)
        best.position = torch.where(better[:, None], rc, best.position)
        best.feature_size = torch.where(better[:, None], torch.tensor([h, w], device=device), best.feature_size)
        best.box = torch.where(better[:, None], box, best.box)
    return best


def _activation_box(sim: torch.Tensor, eligible: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(P, 4) bounding box of the eligible cells with similarity ≥ the 95th percentile over eligible cells."""
    masked = torch.where(eligible, sim, torch.nan)
    thr = torch.nanquantile(masked, 0.95, dim=1, keepdim=True)
    high = (eligible & (sim >= thr)).reshape(-1, h, w)
    rows, cols = high.any(2), high.any(1)
    ar_h, ar_w = torch.arange(h, device=sim.device), torch.arange(w, device=sim.device)
    r0 = torch.where(rows, ar_h, h).amin(1)
    r1 = torch.where(rows, ar_h, -1).amax(1)
    c0 = torch.where(cols, ar_w, w).amin(1)
    c1 = torch.where(cols, ar_w, -1).amax(1)
    return torch.stack([r0, c0, r1, c1], 1)


def duplicates(vectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Indices to keep after exact de-duplication of (scale, vector) rows: the lowest index of each."""
    rows = torch.cat([scale[:, None].to(vectors.dtype), vectors], 1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
    return first.sort().values


def provenance_table(proj: Projection, names: list[str], model: PrototypeSegmenter, image_ids, classes) -> pd.DataFrame:
    """One row per prototype: where its projected vector comes from."""
    cls = model.prototypes.proto_class.tolist()
    scl = model.prototypes.proto_scale.tolist()
    img = proj.image.tolist()
    pos, size, dist = proj.position.tolist(), proj.feature_size.tolist(), proj.distance.tolist()
    return pd.DataFrame({
        "prototype": names,
        "index": range(len(names)),
        "class": [classes[c] for c in cls],
        "scale": scl,
        "image": [image_ids[i] if i >= 0 else None for i in img],
        "row": [p[0] for p in pos],
        "col": [p[1] for p in pos],
        "feature_h": [s[0] for s in size],
        "feature_w": [s[1] for s in size],
        "distance": dist,
        "projected": [bool(np.isfinite(v)) for v in dist],
    }).set_index("prototype")


def source_patches(proj: Projection, split: PreparedDataset, margin_cells: int = 1):
    """(P, 64, 64, 3) uint8 crops around each prototype's high-activation box, and the box in patch pixels.

    Each source image is read once. Prototypes without a source get a grey patch and box −1.
    """
    P = len(proj.distance)
    patches = np.full((P, PATCH_SIZE, PATCH_SIZE, 3), 127, np.uint8)
    boxes = np.full((P, 4), -1.0, np.float32)
    img_idx, box, size, pos = (t.cpu().numpy() for t in (proj.image, proj.box, proj.feature_size, proj.position))
    for i in np.unique(img_idx[img_idx >= 0]):
        image = split.image(int(i))
        H, W = image.shape[:2]
        for p in np.flatnonzero(img_idx == i):
            h, w = size[p]
            sy, sx = H / h, W / w
            r0, c0, r1, c1 = box[p]
            r, c = pos[p]
            r0, c0, r1, c1 = min(r0, r), min(c0, c), max(r1, r), max(c1, c)  # the box holds the chosen cell
            b = np.array([r0 * sy, c0 * sx, (r1 + 1) * sy, (c1 + 1) * sx])  # image pixels
            y0 = int(max(0, b[0] - margin_cells * sy)); x0 = int(max(0, b[1] - margin_cells * sx))
            y1 = int(min(H, np.ceil(b[2] + margin_cells * sy))); x1 = int(min(W, np.ceil(b[3] + margin_cells * sx)))
            crop = Image.fromarray(image[y0:y1, x0:x1]).resize((PATCH_SIZE, PATCH_SIZE), Image.BILINEAR)
            patches[p] = np.asarray(crop)
            fy, fx = PATCH_SIZE / max(y1 - y0, 1), PATCH_SIZE / max(x1 - x0, 1)
            boxes[p] = [(b[0] - y0) * fy, (b[1] - x0) * fx, (b[2] - y0) * fy, (b[3] - x0) * fx]
    return patches, boxes


@torch.no_grad()
def nearest_patches(model: PrototypeSegmenter, loader, device, k: int, progress: bool = True):
    """For each prototype, its k nearest patches over the split (one per image): distances (P, k) and
    whether each patch's cell contains the prototype's class (P, k); unfilled slots have distance inf."""
    model.eval()
    protos = model.prototypes
    P, K = protos.num_prototypes, model.num_classes
    cls = protos.proto_class
    best_d = torch.full((P, k), torch.inf, device=device)
    best_m = torch.zeros(P, k, dtype=torch.bool, device=device)
    for x, y, _ in tqdm(_batches(loader), total=len(loader.dataset), desc="prune", disable=not progress, leave=False):
        feats = model.features(x.to(device), training=False)
        h, w = feats.shape[-2:]
        d = protos.distances(feats)[0].reshape(P, h * w)
        y = y.to(device)
        nonvoid = downsample_labels(y, (h, w)).reshape(h * w) != VOID
        dist, pos = torch.where(nonvoid[None, :], d, torch.inf).min(1)
        onehot = F.one_hot(torch.where(y[0] == VOID, K, y[0]).long(), K + 1)[..., :K].permute(2, 0, 1).float()
        present = F.adaptive_max_pool2d(onehot[None], (h, w))[0].reshape(K, h * w) > 0  # any pixel of the cell
        match = present[cls, pos]
        all_d = torch.cat([best_d, dist[:, None]], 1)
        all_m = torch.cat([best_m, match[:, None]], 1)
        best_d, order = all_d.topk(k, dim=1, largest=False)
        best_m = all_m.gather(1, order)
    return best_d, best_m


def prune_mask(best_d: torch.Tensor, best_m: torch.Tensor, threshold: int) -> torch.Tensor:
    """(P,) bool: keep a prototype when at least `threshold` of its k nearest patches match its class."""
    return (best_m & torch.isfinite(best_d)).sum(1) >= threshold
