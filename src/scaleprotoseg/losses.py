"""Losses as pure functions on tensors (docs/method.md §3).

Every loss is computed at feature resolution: labels are nearest-downsampled to the logits' (h, w), never
the logits upsampled. With multi-scale inputs (MSC) the loss is averaged over the outputs.

Means over pixels and pairs go through `batch_mean`: inside `sharded_batch(n)` (a batch cut into n shards, one
per DistributedDataParallel process) the denominator is the count over the whole batch, summed across the
processes, and the result is scaled by n, so that DDP's average of the shards' gradients is the gradient of
the whole batch's mean, exactly as one process would compute it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data.prepared import VOID
from .data.transforms import downsample_labels, present_classes  # noqa: F401 (present_classes: re-exported)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 if it is in a half-precision type (autocast's output), unchanged otherwise (float64 stays)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def float32_region(device: torch.device):
    """A block where autocast is off (the prototype head and losses run in full precision under mixed precision);
    nothing to switch off on devices autocast does not know (e.g. `meta`, used to count FLOP)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


_SHARDS = [1]  # processes sharing each batch (set by `sharded_batch` during a distributed training step)


@contextmanager
def sharded_batch(processes: int):
    """Within the block, means are over the batch of all `processes` (see the module docstring)."""
    _SHARDS.append(processes)
    try:
        yield
    finally:
        _SHARDS.pop()


def batch_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count (0 when count is 0), over the whole batch when it is sharded across processes."""
    n = _SHARDS[-1]
    if n > 1:
        count = count.detach().clone()
        dist.all_reduce(count)
        return total * n / count.clamp(min=1)
    return total / count.clamp(min=1)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, void: int = VOID) -> torch.Tensor:
    """Mean CE over non-void pixels. logits (B, K, h, w); labels (B, H, W) at input resolution."""
    target = downsample_labels(labels, logits.shape[-2:]).long()
    total = F.cross_entropy(full_precision(logits), target, ignore_index=void, reduction="sum")
    return batch_mean(total, (target != void).sum())  # a crop of void only gives 0, with no host sync


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
             num_classes: int, per_scale: bool, void: int = VOID, table=None, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Diversity loss of ProtoSeg / ScaleProtoSeg (method.md §3), vectorised, with the correct class indexing.

    For every image b and class c with at least 2 pixels at feature resolution, each of c's prototypes
    defines q = softmax over c's pixels of its **distance** map; every compared pair (i, j) contributes
    exp(−J), J = ½[KL(q_i‖q_j) + KL(q_j‖q_i)] = ½ Σ (q_i − q_j)(log q_i − log q_j). The loss is the mean over
    all (image, class, pair) tuples (0 when there are none). distances (B, P, h, w); labels (B, H, W).
    `table`: `kld_pair_mask(...)` computed once per model (it depends only on the prototype tables).
    `classes`: optional (B, C) candidate classes per image (`present_classes`, −1 = padding); classes absent
    from an image contribute nothing, so only the candidates are computed (all K when None). Always float32.
    """
    B, P, h, w = distances.shape
    distances = full_precision(distances)
    target = downsample_labels(labels, (h, w)).view(B, 1, h * w)
    K = num_classes
    index, valid, pairs = table if table is not None else kld_pair_mask(proto_class, proto_scale, K, per_scale)
    n = index.shape[1]
    if classes is None:
        classes = torch.arange(K, device=distances.device).expand(B, K)
    C = classes.shape[1]
    known = classes >= 0
    cls = classes.clamp(min=0)
    mask = (target == classes[:, :, None]) & known[:, :, None]  # (B, C, N)
    count = mask.sum(-1)  # (B, C)
    present = count >= 2
    eff = mask | ~mask.any(-1, keepdim=True)  # classes absent from an image: any pixels, result unused
    idx = index[cls].view(B, C * n)  # (B, C·n) global prototype index
    d = distances.reshape(B, P, h * w).gather(1, idx[:, :, None].expand(B, C * n, h * w)).view(B, C, n, h * w)
    logq = torch.log_softmax(d.masked_fill(~eff[:, :, None], -torch.inf), dim=-1)
    logq0 = torch.where(eff[:, :, None], logq, torch.zeros_like(logq))
    q = logq0.exp() * eff[:, :, None]
    a = torch.einsum("bkin,bkjn->bkij", q, logq0)  # a_ij = Σ q_i log q_j
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    jeff = 0.5 * (diag[..., :, None] + diag[..., None, :] - a - a.transpose(-1, -2))
    use = pairs[cls] & present[:, :, None, None]
    return batch_mean((torch.exp(-jeff) * use).sum(), use.sum())  # 0 without pairs


def group_entropy(weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over classes and groups of the normalised row entropy of the group weights (method.md §3)."""
    w = weight * valid[:, None, :]
    nc = valid.sum(1).float()
    ent = -(w * torch.log(w + 1e-5)).sum(-1) / torch.log(nc.clamp(min=2))[:, None]
    has = (nc > 0).to(ent.dtype)[:, None].expand_as(ent)  # classes without prototypes: no rows (no host sync)
    return (ent * has).sum() / has.sum()
