"""Naive (loop) reference implementations of the prototype head, written from docs/method.md §2.5–§2.7 and §3,
shared by the tests of the prototype layer, its losses and the group head."""

from __future__ import annotations

import torch

from scaleprotoseg.config import ModelConfig

VOID = 255


EPS = 1e-4


def naive_layout(K, M, S):
    """(class, scale) of every prototype index, built by enumerating idx(s, c, m) = s·K·M + c·M + m."""
    P = K * M * S
    cls, scl = [None] * P, [None] * P
    for s in range(S):
        for c in range(K):
            for m in range(M):
                idx = s * K * M + c * M + m
                cls[idx], scl[idx] = c, s
    return cls, scl


def naive_distances(feats, vectors, proto_scale, D):
    """||x_s - p||² per pixel, x_s = the prototype's own scale slice, by direct differences."""
    B, _, h, w = feats.shape
    P = vectors.shape[0]
    out = torch.zeros(B, P, h, w, dtype=feats.dtype)
    for b in range(B):
        for p in range(P):
            s = int(proto_scale[p])
            x = feats[b, s * D : (s + 1) * D]  # (D, h, w)
            for i in range(h):
                for j in range(w):
                    diff = x[:, i, j] - vectors[p]
                    out[b, p, i, j] = (diff * diff).sum()
    return out


def naive_kld(dist, labels, proto_class, proto_scale, K, per_scale):
    """method.md §3 with loops: for b, class c with >= 2 pixels, pairs i < j of c's prototypes (same scale if
    per_scale): q = softmax over c's pixels of the distance map; J = ½(KL(qi‖qj) + KL(qj‖qi)); mean exp(−J)."""
    B, P, h, w = dist.shape
    pc, ps = [int(v) for v in proto_class], [int(v) for v in proto_scale]
    terms = []
    for b in range(B):
        lab = labels[b].reshape(-1).tolist()
        for c in range(K):
            pix = [n for n, v in enumerate(lab) if v == c]
            if len(pix) < 2:
                continue
            protos = [p for p in range(P) if pc[p] == c]
            for a in range(len(protos)):
                for z in range(a + 1, len(protos)):
                    i, j = protos[a], protos[z]
                    if per_scale and ps[i] != ps[j]:
                        continue
                    di = dist[b, i].reshape(-1)[pix]
                    dj = dist[b, j].reshape(-1)[pix]
                    ei, ej = torch.exp(di - di.max()), torch.exp(dj - dj.max())
                    qi, qj = ei / ei.sum(), ej / ej.sum()
                    kl_ij = (qi * (torch.log(qi) - torch.log(qj))).sum()
                    kl_ji = (qj * (torch.log(qj) - torch.log(qi))).sum()
                    terms.append(torch.exp(-0.5 * (kl_ij + kl_ji)))
    if not terms:
        return dist.sum() * 0.0
    return sum(terms) / len(terms)


def naive_simplex(v, iters=200):
    """Projection of a 1-D float64 vector on the simplex by bisection on θ in Σ max(v − θ, 0) = 1."""
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float((v - mid).clamp(min=0).sum()) > 1.0:
            lo = mid
        else:
            hi = mid
    return (v - 0.5 * (lo + hi)).clamp(min=0)


def class_members(proto_class, c):
    """Class c's prototype indices in ascending global order."""
    return [p for p, v in enumerate(proto_class.tolist()) if v == c]


def naive_group_logits(d, proto_class, weight, head, K, G):
    """Group activations Π_j ((d_j+1)/(d_j+ε))^{w_gj} over class c's prototypes, then logits = head @ groups."""
    B, P, h, w = d.shape
    groups = torch.zeros(B, K * G, h, w, dtype=d.dtype)
    for c in range(K):
        members = class_members(proto_class, c)
        for g in range(G):
            act = torch.ones(B, h, w, dtype=d.dtype)
            for j, p in enumerate(members):
                act = act * ((d[:, p] + 1) / (d[:, p] + EPS)) ** weight[c, g, j]
            groups[:, c * G + g] = act
    logits = torch.zeros(B, K, h, w, dtype=d.dtype)
    for k in range(K):
        for n in range(K * G):
            logits[:, k] += head[k, n] * groups[:, n]
    return groups, logits


def small_cfg(**kw):
    base = dict(backbone="small", width=4, pretrained=False, pretrained_path=None, aspp_rates=(1, 2),
                freeze_bn=False, msc_scales=())
    base.update(kw)
    return ModelConfig(**base)


def random_simplex_weights(K, G, counts, gen, pad_value=0.7):
    """Rows on the simplex over each class's n_c slots, with some exact zeros; padding filled with garbage."""
    n_max = max(counts)
    w = torch.full((K, G, n_max), pad_value, dtype=torch.float64)
    for c, n in enumerate(counts):
        for g in range(G):
            if n == 0:
                continue
            r = -torch.log(torch.rand(n, generator=gen, dtype=torch.float64))
            if n > 2:
                r[int(torch.randint(0, n, (1,), generator=gen))] = 0.0
            w[c, g, :n] = r / r.sum()
    return w
