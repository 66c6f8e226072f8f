"""Prototype segmenters: ProtoSeg, ScaleProtoSeg (stage 1) and its sparse group head (stage 2).

docs/method.md §2.4–§2.7 is the specification. The pieces:

- `PrototypeLayer`: P prototypes of dimension D in the **scale-major** layout idx(s, c, m) = s·K·M + c·M + m;
  `proto_class` and `proto_scale` are buffers, so they survive de-duplication and pruning and live in the
  state dict. The squared-L2 distance compares each prototype with its own scale's D-channel slice only:
  one matmul per scale against that scale's prototypes (no loop over classes or pixels).
  Similarity: log((d + 1)/(d + ε)), ε = 1e-4.
- `PrototypeSegmenter`: trunk → ASPP (ProtoSeg: branches summed to D channels; ScaleProtoSeg: concatenated,
  S × D) → sigmoid → distances → similarities → class logits through `last_layer` (+1 own class, −0.5
  otherwise), optionally replaced by the group head.
- `GroupHead`: per class, G × n_c weights whose rows lie on the probability simplex; group activation
  exp(W_c · a_c), i.e. a weighted geometric mean of the similarity ratios (d+1)/(d+ε); a (K, K·G) head at
  +1/−0.5. One gather + one batched contraction for all classes; classes with fewer prototypes (after
  de-duplication) are padded and masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import class_slots, float32_region, full_precision, group_entropy, kld_pair_mask
from .aspp import ASPP
from .base import SegmentationModel

EPSILON = 1e-4
INCORRECT_STRENGTH = -0.5


def class_connection(owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, N) weights: +1 where column n belongs to class k, −0.5 elsewhere (method.md §2.6)."""
    own = F.one_hot(owner, num_classes).T.float()
    return own + INCORRECT_STRENGTH * (1 - own)


def off_class_l1(weight: torch.Tensor, owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Σ |w| over the (K, N) weights connecting column n to a class other than its owner (method.md §3)."""
    own = F.one_hot(owner, num_classes).T.bool()
    return weight.abs().masked_fill(own, 0).sum()


def log_similarity(d: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    return torch.log((d + 1) / (d + eps))


class PrototypeLayer(nn.Module):
    """Prototypes with their class and scale tables; distances and similarities per scale."""

    def __init__(self, num_classes: int, per_class_scale: int, num_scales: int, dim: int):
        super().__init__()
        K, M, S = num_classes, per_class_scale, num_scales
        self.num_classes, self.num_scales, self.dim = K, S, dim
        idx = torch.arange(K * S * M)
        self.vectors = nn.Parameter(torch.rand(K * S * M, dim))  # uniform [0, 1): the sigmoid's range
        self.register_buffer("proto_class", (idx % (K * M)) // M)
        self.register_buffer("proto_scale", idx // (K * M))

    @property
    def num_prototypes(self) -> int:
        return self.vectors.shape[0]

    def pair_table(self, per_scale: bool):
        """The KLD's per-class index and pair mask, computed once per set of prototypes (no host sync per step)."""
        cache = self.__dict__.setdefault("_pair_cache", {})
        key = (per_scale, self.proto_class.device)
        if key not in cache:
            cache[key] = kld_pair_mask(self.proto_class, self.proto_scale, self.num_classes, per_scale)
        return cache[key]

    def scale_layout(self):
        """Per scale, how many prototypes it has, and the permutation that sorts prototypes by scale (None when
        they already are: the scale-major layout, kept by de-duplication and pruning). Cached per prototype set."""
        cache = self.__dict__.setdefault("_pair_cache", {})
        key = ("scales", self.proto_scale.device)
        if key not in cache and self.proto_scale.device.type == "meta":  # no values (FLOP counting): the built layout
            cache[key] = ([self.num_prototypes // self.num_scales] * self.num_scales, None, None)
        if key not in cache:
            counts = torch.bincount(self.proto_scale, minlength=self.num_scales).tolist()
            order = torch.argsort(self.proto_scale, stable=True)
            ordered = bool((order == torch.arange(len(order), device=order.device)).all())
            cache[key] = (counts, None if ordered else order, None if ordered else torch.argsort(order))
        return cache[key]

    def distances(self, feats: torch.Tensor) -> torch.Tensor:
        """Squared L2 distance (B, P, h, w) of every prototype to its scale's slice of `feats` (B, S·D, h, w).

        d = ‖f_s‖² − 2 f_s·p + ‖p‖², the cross term one matmul per scale with that scale's prototypes only
        (S·P·D multiply-adds per pixel would compare every prototype with every scale). Computed in float32
        whatever the autocast context: the subtraction cancels catastrophically in half precision."""
        B, C, h, w = feats.shape
        S, D = self.num_scales, self.dim
        if C != S * D:
            raise ValueError(f"features have {C} channels, the prototype layer expects {S} × {D}")
        with float32_region(feats.device):
            f = full_precision(feats).view(B, S, D, h * w)
            xx = f.pow(2).sum(2)[:, self.proto_scale].view(B, -1, h, w)  # (B, P, h, w)
            counts, order, inverse = self.scale_layout()
            vectors = full_precision(self.vectors) if order is None else full_precision(self.vectors)[order]
            parts, start = [], 0
            for s, n in enumerate(counts):
                if n:
                    parts.append(torch.matmul(vectors[start:start + n], f[:, s]))  # (B, n, h·w)
                    start += n
            xp = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
            if inverse is not None:
                xp = xp[:, inverse]
            pp = full_precision(self.vectors).pow(2).sum(1)[None, :, None, None]
            return F.relu(xx - 2 * xp.view(B, -1, h, w) + pp)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the prototypes at `index` (sorted), e.g. after de-duplication or pruning."""
        index = index.to(self.vectors.device)
        self.__dict__.pop("_pair_cache", None)
        self.vectors = nn.Parameter(self.vectors.data[index].clone(), requires_grad=self.vectors.requires_grad)
        self.proto_class = self.proto_class[index].clone()
        self.proto_scale = self.proto_scale[index].clone()

    def resize_to(self, num_prototypes: int) -> None:
        """Make room for a state dict with another prototype count (loading a de-duplicated model)."""
        self.keep(torch.arange(num_prototypes) % self.num_prototypes)


def project_simplex(v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection of each row of `v` (..., n) onto the probability simplex (sort-based, exact zeros).

    Entries where `valid` is False are not part of the row: they come out as exactly 0.
    """
    if valid is None:
        valid = torch.ones_like(v, dtype=torch.bool)
    u = torch.where(valid, v, torch.full_like(v, -torch.inf)).sort(dim=-1, descending=True).values
    u_valid = torch.isfinite(u)
    cssv = torch.where(u_valid, u, torch.zeros_like(u)).cumsum(-1) - 1
    j = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    cond = u_valid & (u - cssv / j > 0)
    rho = (cond * j).amax(-1, keepdim=True).clamp(min=1)  # the largest j satisfying the condition
    theta = cssv.gather(-1, rho.long() - 1) / rho
    # Entries ranked after ρ are zero in exact arithmetic; make them exactly zero despite round-off.
    nxt = torch.cat([u, torch.full_like(u[..., :1], -torch.inf)], -1).gather(-1, rho.long())  # (ρ+1)-th largest
    last = u.gather(-1, rho.long() - 1)
    out = (v - theta).clamp(min=0)
    out = torch.where((nxt < last) & (v <= nxt), torch.zeros_like(out), out)
    return torch.where(valid, out, torch.zeros_like(v))


class GroupHead(nn.Module):
    """Sparse cross-scale groups (stage 2), vectorised over classes with a padded (K, n_max) index."""

    def __init__(self, proto_class: torch.Tensor, num_classes: int, groups: int):
        super().__init__()
        K, G = num_classes, groups
        index, valid = class_slots(proto_class, K)
        counts = valid.sum(1)
        n_max = index.shape[1]
        self.num_classes, self.groups, self.num_prototypes = K, G, len(proto_class)
        self.register_buffer("index", index)  # (K, n_max): class k's prototypes in ascending global order
        self.register_buffer("valid", valid)
        self.register_buffer("group_class", torch.arange(K).repeat_interleave(G))  # (K·G,)
        bound = 1 / counts.clamp(min=1).float().sqrt()  # nn.Linear's default init, U(±1/√n_c)
        w = (torch.rand(K, G, n_max) * 2 - 1) * bound[:, None, None]
        self.weight = nn.Parameter(project_simplex(w, valid[:, None, :].expand(K, G, n_max)))
        self.head = nn.Parameter(class_connection(self.group_class, K))  # (K, K·G)

    def valid_weights(self) -> torch.Tensor:
        return self.valid[:, None, :].expand_as(self.weight)

    @torch.no_grad()
    def project(self) -> None:
        """Project every row of every W_c on the simplex (after each optimiser update)."""
        self.weight.copy_(project_simplex(self.weight, self.valid_weights()))

    @torch.no_grad()
    def threshold(self, t: float) -> None:
        """Zero the weights below t, without renormalising (the paper's evaluation convention)."""
        self.weight.masked_fill_(self.weight < t, 0.0)

    def group_activations(self, sim: torch.Tensor) -> torch.Tensor:
        """(B, K·G, h, w) = exp(W_c · a_c) for every class c and group g; `sim` is (B, P, h, w)."""
        B, _, h, w = sim.shape
        a = sim[:, self.index.flatten()].view(B, self.num_classes, -1, h, w)  # (B, K, n_max, h, w)
        weight = self.weight * self.valid[:, None, :]
        z = torch.einsum("bknhw,kgn->bkghw", a, weight)
        return z.exp().reshape(B, self.num_classes * self.groups, h, w)

    def forward(self, sim: torch.Tensor) -> torch.Tensor:
        with float32_region(sim.device):  # the head is float32 under mixed precision
            return torch.einsum("bghw,kg->bkhw", self.group_activations(full_precision(sim)), self.head)

    def off_class_l1(self) -> torch.Tensor:
        return off_class_l1(self.head, self.group_class, self.num_classes)

    def entropy(self) -> torch.Tensor:
        """Mean over classes and groups of the row entropy / log(n_c) (method.md §3)."""
        return group_entropy(self.weight, self.valid)

    def used_prototypes(self) -> torch.Tensor:
        """(P,) bool: prototype has a non-zero weight in at least one group of its class."""
        used = ((self.weight != 0) & self.valid[:, None, :]).any(1)  # (K, n_max)
        out = torch.zeros(self.num_prototypes, dtype=torch.bool, device=used.device)
        return out.index_put((self.index[self.valid],), used[self.valid], accumulate=False)


class PrototypeSegmenter(SegmentationModel):
    """ProtoSeg (`scales=False`: ASPP summed) or ScaleProtoSeg (`scales=True`: ASPP concatenated per scale)."""

    def __init__(self, backbone: nn.Module, num_classes: int, rates, per_class: int, features: int,
                 multiscale: bool, msc_scales=(), freeze_bn: bool = False):
        super().__init__(backbone, num_classes, msc_scales, bn_eval=freeze_bn)
        S = len(rates) if multiscale else 1
        self.aspp = ASPP(backbone.out_channels, features, rates, mode="concat" if multiscale else "sum")
        self.prototypes = PrototypeLayer(num_classes, per_class, S, features)
        self.last_layer = nn.Parameter(class_connection(self.prototypes.proto_class, num_classes))  # (K, P)
        self.group_head: GroupHead | None = None
        self.multiscale = multiscale
        self.bn_frozen = freeze_bn  # the paper: BatchNorm frozen to ImageNet statistics, never optimised

    # -- structure -----------------------------------------------------------------------------------------
    def add_groups(self, groups: int) -> GroupHead:
        self.group_head = GroupHead(self.prototypes.proto_class.cpu(), self.num_classes, groups).to(self.last_layer.device)
        return self.group_head

    def keep_prototypes(self, index: torch.Tensor) -> None:
        """Remove every prototype not in `index`: vectors, tables and last-layer columns together."""
        index = torch.as_tensor(index, dtype=torch.long).sort().values
        self.prototypes.keep(index)
        self.last_layer = nn.Parameter(self.last_layer.data[:, index.to(self.last_layer.device)].clone(),
                                       requires_grad=self.last_layer.requires_grad)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Adapt to the prototype count and group head stored in `state_dict` before loading."""
        self.prototypes.__dict__.pop("_pair_cache", None)
        n = state_dict["prototypes.vectors"].shape[0]
        if n != self.prototypes.num_prototypes:
            self.keep_prototypes(torch.arange(n) % self.prototypes.num_prototypes)
        if "group_head.weight" in state_dict:  # rebuild the head for the stored (possibly de-duplicated) tables
            self.group_head = None
            self.prototypes.proto_class = state_dict["prototypes.proto_class"].clone()
            self.add_groups(state_dict["group_head.weight"].shape[1])
            for name in ("index", "valid", "group_class"):
                setattr(self.group_head, name, state_dict[f"group_head.{name}"].clone())
            self.group_head.weight = nn.Parameter(state_dict["group_head.weight"].clone())
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- forward -------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.backbone(x))  # pre-sigmoid: MSC's max commutes with the sigmoid

    def features(self, x: torch.Tensor, training: bool | None = None):
        """Sigmoid features (B, S·D, h, w): a list of MSC outputs in training, one tensor in evaluation."""
        training = self.training if training is None else training
        out = self.msc(x, training)
        return [torch.sigmoid(full_precision(o)) for o in out] if isinstance(out, list) else torch.sigmoid(full_precision(out))

    def head(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Distances, similarities and logits, in float32 even under autocast (mixed precision covers the
        trunk and ASPP only: d = ‖f‖² − 2f·p + ‖p‖² and log((d+1)/(d+ε)) near d = 0 are not half-precision safe)."""
        with float32_region(feats.device):
            d = self.prototypes.distances(full_precision(feats))
            sim = log_similarity(d)
            if self.group_head is not None:
                logits = self.group_head(sim)
            else:
                logits = torch.einsum("bphw,kp->bkhw", sim, self.last_layer)
        return {"logits": logits, "distances": d, "similarities": sim}

    def forward(self, x: torch.Tensor):
        """Training: a list (one per MSC output) of {logits, distances, similarities}; eval: one dict."""
        feats = self.features(x)
        if isinstance(feats, list):
            return [self.head(f) for f in feats]
        return self.head(feats)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, training=False))["logits"]

    # -- parameters and regularisers -------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        bn = {id(p) for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
        trunk = [p for p in self.backbone.parameters() if not (self.bn_frozen and id(p) in bn)]
        groups = {
            "trunk": trunk,
            "frozen_bn": [p for p in self.backbone.parameters() if self.bn_frozen and id(p) in bn],
            "aspp": list(self.aspp.parameters()),
            "prototypes": [self.prototypes.vectors],
            "last_layer": [self.last_layer],
        }
        if self.group_head is not None:
            groups["group_weights"] = [self.group_head.weight]
            groups["group_head"] = [self.group_head.head]
        return groups

    def off_class_l1(self) -> torch.Tensor:
        return off_class_l1(self.last_layer, self.prototypes.proto_class, self.num_classes)


def prototype_counts(model: PrototypeSegmenter) -> dict[str, float]:
    """Prototype totals and, with a group head, how many are used and how sparse the groups are."""
    P = model.prototypes.num_prototypes
    out: dict[str, float] = {"prototypes": P}
    gh = model.group_head
    if gh is not None:
        used = int(gh.used_prototypes().sum())
        valid = gh.valid_weights()
        w = gh.weight[valid]
        out.update({
            "prototypes_used": used,
            "prototypes_used_%": 100.0 * used / max(P, 1),
            "group_weights_zero_%": 100.0 * float((w == 0).float().mean()),
            "nonzero_per_group": float((gh.weight != 0).logical_and(valid).sum(-1).float().mean()),
        })
    return out


def prototype_names(model: PrototypeSegmenter, classes) -> list[str]:
    """Readable names: '<class>/s<scale>/<rank within class and scale>'."""
    cls, scl = model.prototypes.proto_class.tolist(), model.prototypes.proto_scale.tolist()
    seen: dict[tuple[int, int], int] = {}
    names = []
    for c, s in zip(cls, scl):
        m = seen.get((c, s), 0)
        seen[(c, s)] = m + 1
        names.append(f"{classes[c]}/s{s}/{m}")
    return names


