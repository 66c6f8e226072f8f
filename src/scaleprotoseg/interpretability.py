"""Interpretability metrics (docs/method.md §8, the definitions we commit to).

- **Activation map** of prototype p on an image: its log-similarity at feature resolution, upsampled
  bilinearly to the label size — computed per class, for that class's prototypes only, so no tensor ever
  holds every prototype's map at full resolution.
- **Region** of p for class c (`quantile_region`): the pixels of c's mask whose activation is ≥ the
  q-quantile (q = 0.8) of the activation over c's mask.
- **Part keypoints**: for every part id k inside the class mask, the centroids of the 8-connected components
  of that part's mask. Part k is *visible* if it has a keypoint, *present* in a region if a keypoint lies in it.
- **Consistency**: f_p(k) = #images where k is present / #images where k is visible (images containing p's
  class); p is consistent iff max_k f_p(k) ≥ τ (τ = 0.8). Score = 100 × consistent / evaluated. Prototypes
  whose class never shows a visible part are not evaluated (and counted apart).
- **Stability**: the presence vector (present = 1, otherwise 0) on x and on x + ε, ε ~ N(0, σ²) clipped to
  ±0.25 in normalised input space (σ = 0.2, seeded); s_p = fraction of images with an unchanged vector;
  score = 100 × mean of s_p.
- **Overlap**: per class, IoU between the 95th-percentile-binarised activation maps (each map's own
  percentile over the image) of every pair of the class's prototypes (or groups), accumulated over images
  (ΣI / ΣU); reported per class and as the mean.
Evaluated prototypes: all for protoseg/scaleprotoseg; the used ones for scaleprotoseg_groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from skimage.measure import label as connected_components
from skimage.measure import regionprops

QUANTILE = 0.8
TAU = 0.8
SIGMA = 0.2
NOISE_CLIP = 0.25
OVERLAP_PERCENTILE = 95.0


def quantile_region(act: torch.Tensor, mask: torch.Tensor, q: float = QUANTILE) -> torch.Tensor:
    """Bool (…, H, W): pixels of `mask` whose activation is ≥ the q-quantile of the activation over `mask`.

    `act` may hold several maps (n, H, W); each gets its own threshold."""
    if not bool(mask.any()):
        return torch.zeros_like(act, dtype=torch.bool)
    vals = act[..., mask]  # (…, n_mask)
    thr = torch.quantile(vals.float(), q, dim=-1)
    return mask & (act >= thr[..., None, None])


def part_keypoints(parts: np.ndarray, mask: np.ndarray) -> dict[int, np.ndarray]:
    """{part id: (n, 2) int (row, col) centroids of the 8-connected components of that part inside mask}."""
    out = {}
    inside = np.where(mask, parts, 0)
    for k in np.unique(inside):
        if k == 0:
            continue
        comps = connected_components(inside == k, connectivity=2)
        cents = [np.round(r.centroid).astype(int) for r in regionprops(comps)]
        out[int(k)] = np.array(cents, dtype=int).reshape(-1, 2)
    return out


def presence(regions: torch.Tensor, keypoints: dict[int, np.ndarray], n_parts: int) -> np.ndarray:
    """(n, n_parts) float: 1 where part k has a keypoint inside region i, 0 where visible but not present,
    NaN where part k is not visible in this image."""
    n = regions.shape[0]
    out = np.full((n, n_parts), np.nan)
    reg = regions.cpu().numpy()
    for k, pts in keypoints.items():
        if 1 <= k <= n_parts and len(pts):
            out[:, k - 1] = reg[:, pts[:, 0], pts[:, 1]].any(axis=1)
    return out


@dataclass
class PartCounts:
    """Per prototype and part: in how many images the part was present in its region / visible."""

    present: np.ndarray  # (P, n_parts)
    visible: np.ndarray  # (P, n_parts)
    stable: np.ndarray = field(default=None)  # (P,) images with an unchanged presence vector under noise
    images: np.ndarray = field(default=None)  # (P,) images evaluated for stability

    @staticmethod
    def zeros(P: int, n_parts: int) -> PartCounts:
        return PartCounts(np.zeros((P, n_parts)), np.zeros((P, n_parts)), np.zeros(P), np.zeros(P))

    def add(self, protos: np.ndarray, pres: np.ndarray, pres_noisy: np.ndarray | None = None) -> None:
        vis = ~np.isnan(pres)
        self.visible[protos] += vis
        self.present[protos] += np.nan_to_num(pres) > 0
        if pres_noisy is not None:
            a, b = np.nan_to_num(pres) > 0, np.nan_to_num(pres_noisy) > 0
            self.stable[protos] += (a == b).all(axis=1)
            self.images[protos] += 1


def consistency_score(counts: PartCounts, evaluated: np.ndarray, tau: float = TAU) -> dict:
    """Consistency over the `evaluated` prototypes (bool mask); see the module docstring."""
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(counts.visible > 0, counts.present / np.maximum(counts.visible, 1), np.nan)
    has_parts = (counts.visible > 0).any(axis=1)
    best = np.where(has_parts, np.nanmax(np.where(has_parts[:, None], f, 0.0), axis=1), np.nan)
    ev = evaluated & has_parts
    consistent = ev & (best >= tau)
    return {
        "consistency": 100.0 * consistent.sum() / max(ev.sum(), 1) if ev.any() else float("nan"),
        "consistency_evaluated": int(ev.sum()),
        "consistency_no_visible_part": int((evaluated & ~has_parts).sum()),
        "per_prototype_best": best,
    }


def stability_score(counts: PartCounts, evaluated: np.ndarray) -> dict:
    ev = evaluated & (counts.images > 0)
    s = np.where(counts.images > 0, counts.stable / np.maximum(counts.images, 1), np.nan)
    return {"stability": 100.0 * float(np.mean(s[ev])) if ev.any() else float("nan"), "stability_evaluated": int(ev.sum()),
            "per_prototype_stability": s}


def binarise_top(maps: torch.Tensor, percentile: float = OVERLAP_PERCENTILE) -> torch.Tensor:
    """(n, H, W) bool: each map ≥ its own percentile over the whole image."""
    flat = maps.reshape(len(maps), -1).float()
    thr = torch.quantile(flat, percentile / 100.0, dim=1) if flat.shape[1] <= 16_000_000 else _kth(flat, percentile)
    return maps >= thr[:, None, None]


def _kth(flat: torch.Tensor, percentile: float) -> torch.Tensor:
    k = max(int(round(percentile / 100.0 * (flat.shape[1] - 1))) + 1, 1)
    return flat.kthvalue(k, dim=1).values


def pair_overlap(binary: torch.Tensor) -> tuple[float, float]:
    """Σ over pairs i < j of |b_i ∧ b_j| and |b_i ∨ b_j| for (n, H, W) bool maps."""
    n = binary.shape[0]
    if n < 2:
        return 0.0, 0.0
    b = binary.reshape(n, -1).float()
    inter = b @ b.T
    size = b.sum(1)
    union = size[:, None] + size[None, :] - inter
    iu = torch.triu_indices(n, n, offset=1)
    return float(inter[iu[0], iu[1]].sum()), float(union[iu[0], iu[1]].sum())


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) → (n, H, W), bilinear."""
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def sparsity(model) -> dict:
    """Prototypes used (count, %), % zero group weights, mean non-zero weights per group."""
    from .models.prototypes import prototype_counts

    return prototype_counts(model)


@dataclass
class InterpretResult:
    metrics: dict
    prototypes: object  # pandas DataFrame, one row per prototype
    overlap: object  # pandas DataFrame, per class


@torch.no_grad()
def similarity_maps(model, x: torch.Tensor) -> torch.Tensor:
    """(P, h, w) log-similarities of one normalised image (1, 3, H, W) at feature resolution."""
    from .models.prototypes import log_similarity

    feats = model.features(x, training=False)
    return log_similarity(model.prototypes.distances(feats))[0]


@torch.no_grad()
def evaluate_interpretability(model, dataset, data_cfg, device, seed: int, names, q: float = QUANTILE,
                              tau: float = TAU, sigma: float = SIGMA, max_images: int = 0, progress: bool = True,
                              pruned_from: int | None = None) -> InterpretResult:
    """Consistency, stability, overlaps and sparsity of a prototype model over `dataset` (with part masks)."""
    from .data.prepared import VOID
    from .data.transforms import eval_transform
    from .progress import tqdm

    model.eval()
    meta = dataset.meta
    K, P = model.num_classes, model.prototypes.num_prototypes
    proto_class = model.prototypes.proto_class.cpu().numpy()
    gh = model.group_head
    evaluated = gh.used_prototypes().cpu().numpy() if gh is not None else np.ones(P, bool)
    has_parts = meta.has_parts
    n_parts = max((len(v) for v in meta.parts.values()), default=0)
    counts = PartCounts.zeros(P, max(n_parts, 1))
    ov = {k: np.zeros(K) for k in ("proto_i", "proto_u", "group_i", "group_u")}
    gen = torch.Generator().manual_seed(int(seed))
    by_class = [np.flatnonzero(proto_class == c) for c in range(K)]
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    for i in tqdm(range(n), desc="interpret", disable=not progress, leave=False):
        image, label = dataset.sample(i)
        parts = dataset.parts(i) if has_parts else None
        x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None]
        noise = (torch.randn(x.shape, generator=gen) * sigma).clamp(-NOISE_CLIP, NOISE_CLIP)
        sim = similarity_maps(model, x.to(device))
        sim_noisy = similarity_maps(model, (x + noise).to(device)) if has_parts else None
        groups = gh.group_activations(sim[None])[0] if gh is not None else None
        H, W = label.shape
        lab = torch.from_numpy(label).to(device)
        for c in np.unique(label).tolist():  # Python ints: c · G in a uint8 label's type wraps past class 85 (G = 3)
            if c == VOID or len(by_class[c]) == 0:
                continue
            protos = by_class[c]
            mask = lab == int(c)
            act = upsample(sim[protos], (H, W))
            I, U = pair_overlap(binarise_top(act))
            ov["proto_i"][c] += I
            ov["proto_u"][c] += U
            if groups is not None:
                G = gh.groups
                gmaps = upsample(groups[c * G : (c + 1) * G], (H, W))
                I, U = pair_overlap(binarise_top(gmaps))
                ov["group_i"][c] += I
                ov["group_u"][c] += U
            if parts is None:
                continue
            kp = part_keypoints(parts, label == c)
            if not kp:
                continue
            pres = presence(quantile_region(act, mask, q), kp, counts.present.shape[1])
            act_n = upsample(sim_noisy[protos], (H, W))
            pres_n = presence(quantile_region(act_n, mask, q), kp, counts.present.shape[1])
            counts.add(protos, pres, pres_n)
    cons = consistency_score(counts, evaluated, tau)
    stab = stability_score(counts, evaluated)
    with np.errstate(invalid="ignore", divide="ignore"):
        proto_ov = np.where(ov["proto_u"] > 0, 100 * ov["proto_i"] / np.maximum(ov["proto_u"], 1), np.nan)
        group_ov = np.where(ov["group_u"] > 0, 100 * ov["group_i"] / np.maximum(ov["group_u"], 1), np.nan)
    metrics = {
        "images": n,
        "consistency": cons["consistency"],
        "consistency_evaluated": cons["consistency_evaluated"],
        "consistency_no_visible_part": cons["consistency_no_visible_part"],
        "stability": stab["stability"],
        "prototype_overlap": float(np.nanmean(proto_ov)) if np.isfinite(proto_ov).any() else float("nan"),
        "settings": {"quantile": q, "tau": tau, "sigma": sigma, "noise_clip": NOISE_CLIP, "seed": int(seed),
                     "overlap_percentile": OVERLAP_PERCENTILE},
        **sparsity(model),
    }
    if gh is not None:
        metrics["group_overlap"] = float(np.nanmean(group_ov)) if np.isfinite(group_ov).any() else float("nan")
    if pruned_from is not None:
        metrics["prototypes_before_pruning"] = pruned_from
        metrics["prototypes_after_pruning"] = P
    table = pd.DataFrame({
        "prototype": names,
        "class": [meta.classes[c] for c in proto_class],
        "scale": model.prototypes.proto_scale.cpu().numpy(),
        "evaluated": evaluated,
        "best_part_frequency": cons["per_prototype_best"],
        "stability": stab["per_prototype_stability"],
    }).set_index("prototype")
    overlap = pd.DataFrame({"prototype overlap %": proto_ov, **({"group overlap %": group_ov} if gh is not None else {})},
                           index=list(meta.classes))
    return InterpretResult(metrics, table, overlap)


# --------------------------------------------------------------------------------------------------------
# model analysis: how the groups are composed and which scales the model uses


def group_composition(model, classes, names):
    """Per class, the (G, n_c) group-weight matrix with its columns ordered by scale, and the column labels."""
    gh = model.group_head
    w, idx, valid = gh.weight.detach().cpu(), gh.index.cpu(), gh.valid.cpu()
    scale = model.prototypes.proto_scale.cpu()
    mats, cols = [], []
    for c in range(gh.num_classes):
        js = [j for j in range(idx.shape[1]) if valid[c, j]]
        js.sort(key=lambda j: (int(scale[idx[c, j]]), int(idx[c, j])))
        mats.append(w[c][:, js].numpy())
        cols.append(["/".join(names[int(idx[c, j])].rsplit("/", 2)[1:]) for j in js])
    return mats, cols, list(classes)


def scale_usage(model, classes) -> pd.DataFrame:
    """Per class (and overall), the share of used prototype weight from each scale: group weights summed
    over groups for the grouped model; positive own-class last-layer weights otherwise."""
    scale = model.prototypes.proto_scale.cpu()
    cls = model.prototypes.proto_class.cpu()
    S = model.prototypes.num_scales
    gh = model.group_head
    if gh is not None:
        per_proto = torch.zeros(model.prototypes.num_prototypes)
        w = gh.weight.detach().cpu().sum(1)  # (K, n_max)
        per_proto.index_put_((gh.index.cpu()[gh.valid.cpu()],), w[gh.valid.cpu()])
    else:
        per_proto = model.last_layer.detach().cpu()[cls, torch.arange(len(cls))].clamp(min=0)
    table = torch.zeros(len(classes), S)
    table.index_put_((cls, scale), per_proto, accumulate=True)
    share = table / table.sum(1, keepdim=True).clamp(min=1e-12)
    df = pd.DataFrame(100 * share.numpy(), index=list(classes), columns=[f"scale {s}" for s in range(S)])
    total = table.sum(0)
    df.loc["all classes"] = (100 * total / total.sum().clamp(min=1e-12)).numpy()
    return df
