"""Losses as pure functions on tensors (docs/method.md §3).

Every loss is computed at feature resolution: labels are nearest-downsampled to the logits' (h, w), never
the logits upsampled. With multi-scale inputs (MSC) the loss is averaged over the outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.prepared import VOID
from .data.transforms import downsample_labels


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, void: int = VOID) -> torch.Tensor:
    """Mean CE over non-void pixels. logits (B, K, h, w); labels (B, H, W) at input resolution."""
    target = downsample_labels(labels, logits.shape[-2:])
    if not (target != void).any():
        return logits.sum() * 0.0  # a crop of void only: no signal, but keep the graph
    return F.cross_entropy(logits, target, ignore_index=void)


def msc_mean(loss_fn, outputs, labels: torch.Tensor) -> torch.Tensor:
    """Average `loss_fn(output, labels)` over the MSC outputs (a single tensor counts as one)."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, labels)
    return sum(loss_fn(o, labels) for o in outputs) / len(outputs)


def class_slots(proto_class: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded per-class prototype index (K, n_max), each row in ascending global order, and its validity
    mask: the layout that lets per-class computations run for all classes at once (classes may own
    different numbers of prototypes after de-duplication or pruning)."""
    P = len(proto_class)
    counts = torch.bincount(proto_class, minlength=num_classes)
    n = int(counts.max()) if P else 0
    order = torch.argsort(proto_class, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=proto_class.device)[None, :]
    valid = slot < counts[:, None]
    index = torch.where(valid, order[(starts[:, None] + slot).clamp(max=max(P - 1, 0))], torch.zeros_like(slot))
    return index, valid


def kld_pair_mask(proto_class: torch.Tensor, proto_scale: torch.Tensor, num_classes: int, per_scale: bool):
    """`class_slots` plus the (K, n, n) mask of pairs i < j that the diversity loss compares: all pairs of
    a class (ProtoSeg) or pairs within one scale (ScaleProtoSeg)."""
    index, valid = class_slots(proto_class, num_classes)
    slot = torch.arange(index.shape[1], device=index.device)[None, :]
    pairs = valid[:, :, None] & valid[:, None, :] & (slot[:, :, None] < slot[:, None, :])
    if per_scale:
        sc = proto_scale[index]
        pairs &= sc[:, :, None] == sc[:, None, :]
    return index, valid, pairs


def kld_loss(distances: torch.Tensor, labels: torch.Tensor, proto_class: torch.Tensor, proto_scale: torch.Tensor,
             num_classes: int, per_scale: bool, void: int = VOID, table=None) -> torch.Tensor:
    """Diversity loss of ProtoSeg / ScaleProtoSeg (method.md §3), vectorised, with the correct class indexing.

    For every image b and class c with at least 2 pixels at feature resolution, each of c's prototypes
    defines q = softmax over c's pixels of its **distance** map; every compared pair (i, j) contributes
    exp(−J), J = ½[KL(q_i‖q_j) + KL(q_j‖q_i)] = ½ Σ (q_i − q_j)(log q_i − log q_j). The loss is the mean over
    all (image, class, pair) tuples (0 when there are none). distances (B, P, h, w); labels (B, H, W).
    `table`: `kld_pair_mask(...)` computed once per model (it depends only on the prototype tables).
    """
    B, P, h, w = distances.shape
    target = downsample_labels(labels, (h, w)).view(B, 1, h * w)
    K = num_classes
    index, valid, pairs = table if table is not None else kld_pair_mask(proto_class, proto_scale, K, per_scale)
    n = index.shape[1]
    cls = torch.arange(K, device=distances.device)[None, :, None]
    mask = target == cls  # (B, K, N)
    count = mask.sum(-1)  # (B, K)
    present = count >= 2
    eff = mask | ~mask.any(-1, keepdim=True)  # classes absent from an image: any pixels, result unused
    d = distances.reshape(B, P, h * w)[:, index.flatten()].view(B, K, n, h * w)
    logq = torch.log_softmax(d.masked_fill(~eff[:, :, None], -torch.inf), dim=-1)
    logq0 = torch.where(eff[:, :, None], logq, torch.zeros_like(logq))
    q = logq0.exp() * eff[:, :, None]
    a = torch.einsum("bkin,bkjn->bkij", q, logq0)  # a_ij = Σ q_i log q_j
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    jeff = 0.5 * (diag[..., :, None] + diag[..., None, :] - a - a.transpose(-1, -2))
    use = pairs[None] & present[:, :, None, None]
    total = use.sum()
    value = (torch.exp(-jeff) * use).sum()
    return torch.where(total > 0, value / total.clamp(min=1), value * 0)


def group_entropy(weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over classes and groups of the normalised row entropy of the group weights (method.md §3)."""
    w = weight * valid[:, None, :]
    nc = valid.sum(1).float()
    ent = -(w * torch.log(w + 1e-5)).sum(-1) / torch.log(nc.clamp(min=2))[:, None]
    return ent[nc > 0].mean()
