"""Prototype layer, KLD diversity loss, simplex projection, group head, Pascal parameter counts and pruning.

Every check compares the package against an independent, naive (loop) implementation written here from
docs/method.md §2.5–§2.7 and §3, or against answers computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaleprotoseg.config import ModelConfig
from scaleprotoseg.data.transforms import downsample_labels
from scaleprotoseg.losses import group_entropy, kld_loss, kld_pair_mask
from scaleprotoseg.models.build import build_model
from scaleprotoseg.models.prototypes import (
    GroupHead,
    PrototypeLayer,
    PrototypeSegmenter,
    class_connection,
    log_similarity,
    project_simplex,
)

VOID = 255
EPS = 1e-4


# ---------------------------------------------------------------------------------------------------------
# naive reference implementations (loops, straight from the spec)


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


# ---------------------------------------------------------------------------------------------------------
# 1. distances and the prototype layout


@pytest.mark.parametrize("K,M,S,D", [(3, 2, 1, 5), (3, 2, 4, 5), (2, 3, 4, 3)])
def test_distances_match_brute_force(K, M, S, D):
    torch.manual_seed(0)
    layer = PrototypeLayer(K, M, S, D).double()
    feats = torch.rand(2, S * D, 3, 4, dtype=torch.float64)
    got = layer.distances(feats)
    want = naive_distances(feats, layer.vectors.detach(), layer.proto_scale, D)
    assert got.shape == (2, K * M * S, 3, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_distances_float32_and_scale_isolation():
    torch.manual_seed(1)
    K, M, S, D = 3, 2, 4, 6
    layer = PrototypeLayer(K, M, S, D)
    feats = torch.rand(1, S * D, 4, 4)
    # Put prototype 13 (scale 2) exactly into its scale's slice at pixel (1, 2): its distance there is 0.
    p = 13
    s = int(layer.proto_scale[p])
    assert s == 2
    feats[0, s * D : (s + 1) * D, 1, 2] = layer.vectors.data[p]
    d = layer.distances(feats).detach()
    want = naive_distances(feats.double(), layer.vectors.detach().double(), layer.proto_scale, D)
    torch.testing.assert_close(d.double(), want, rtol=1e-4, atol=1e-5)
    assert (d >= 0).all()
    assert float(d[0, p, 1, 2]) < 1e-5
    # Changing another scale's channels leaves every scale-2 distance unchanged, and changes scale 0's.
    feats2 = feats.clone()
    feats2[:, 0:D] = torch.rand(1, D, 4, 4)
    d2 = layer.distances(feats2).detach()
    on2 = layer.proto_scale == 2
    on0 = layer.proto_scale == 0
    torch.testing.assert_close(d2[:, on2], d[:, on2])
    assert not torch.allclose(d2[:, on0], d[:, on0])


def test_distances_reject_wrong_channel_count():
    layer = PrototypeLayer(2, 1, 4, 3)
    with pytest.raises(ValueError):
        layer.distances(torch.rand(1, 3, 2, 2))


@pytest.mark.parametrize("K,M,S", [(21, 3, 4), (21, 10, 1), (3, 2, 4)])
def test_layout_tables_and_state_dict(K, M, S):
    layer = PrototypeLayer(K, M, S, 4)
    cls, scl = naive_layout(K, M, S)
    assert layer.proto_class.tolist() == cls
    assert layer.proto_scale.tolist() == scl
    assert layer.num_prototypes == K * M * S
    sd = layer.state_dict()
    assert "proto_class" in sd and "proto_scale" in sd
    assert sd["proto_class"].tolist() == cls and sd["proto_scale"].tolist() == scl
    # Init uniform [0, 1): the sigmoid's range.
    assert (layer.vectors >= 0).all() and (layer.vectors < 1).all()


def test_class_connection_naive():
    owner = torch.tensor([2, 0, 0, 1, 2, 3, 0])
    got = class_connection(owner, 4)
    want = torch.tensor([[1.0 if owner[p] == k else -0.5 for p in range(len(owner))] for k in range(4)])
    torch.testing.assert_close(got, want)


def test_segmenter_last_layer_init_and_tables_in_state_dict():
    torch.manual_seed(0)
    model = build_model("scaleprotoseg", small_cfg(aspp_rates=(1, 2, 3)), 3, prototypes=2, features=4)
    cls, scl = naive_layout(3, 2, 3)
    assert model.prototypes.proto_class.tolist() == cls
    assert model.prototypes.proto_scale.tolist() == scl
    sd = model.state_dict()
    assert "prototypes.proto_class" in sd and "prototypes.proto_scale" in sd
    P = len(cls)
    want = torch.tensor([[1.0 if cls[p] == k else -0.5 for p in range(P)] for k in range(3)])
    torch.testing.assert_close(model.last_layer.data, want)


# ---------------------------------------------------------------------------------------------------------
# 2. log similarity


def test_log_similarity_values():
    assert float(log_similarity(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(math.log(1e4), rel=1e-12)
    assert float(log_similarity(torch.tensor(0.0))) == pytest.approx(math.log(1e4), rel=1e-6)
    assert float(log_similarity(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(math.log(2 / 1.0001), rel=1e-12)
    assert float(log_similarity(torch.tensor(3.0, dtype=torch.float64))) == pytest.approx(math.log(4 / 3.0001), rel=1e-12)


def test_log_similarity_monotone_decreasing():
    d = torch.cat([torch.linspace(0, 1e-3, 200), torch.linspace(2e-3, 100, 2000)]).double()
    a = log_similarity(d)
    assert (a[1:] < a[:-1]).all()
    assert (a > 0).all()
    assert float(a[0]) == pytest.approx(math.log(1e4))
    assert float(log_similarity(torch.tensor(1e8, dtype=torch.float64))) < 1e-7


# ---------------------------------------------------------------------------------------------------------
# 3. KLD diversity loss


def test_downsample_labels_is_identity_at_feature_resolution():
    lab = torch.randint(0, 4, (2, 5, 6))
    assert torch.equal(downsample_labels(lab, (5, 6)), lab)


def kld_labels():
    """B = 2, 4 × 5 labels, K = 4. Image 0: classes 0 and 1 large, class 2 a single pixel, class 3 absent,
    some void. Image 1: class 3 large, class 1 a single pixel, class 0 absent, class 2 two pixels."""
    lab = torch.full((2, 4, 5), VOID, dtype=torch.long)
    lab[0] = torch.tensor([
        [0, 0, 0, 1, 1],
        [0, 0, 255, 1, 1],
        [0, 255, 1, 1, 2],
        [0, 0, 1, 255, 255],
    ])
    lab[1] = torch.tensor([
        [3, 3, 3, 3, 255],
        [3, 3, 1, 3, 255],
        [2, 3, 3, 3, 3],
        [2, 255, 3, 3, 3],
    ])
    return lab


def full_tables(K, M, S):
    cls, scl = naive_layout(K, M, S)
    return torch.tensor(cls), torch.tensor(scl)


@pytest.mark.parametrize("per_scale", [True, False])
@pytest.mark.parametrize("M,S", [(2, 2), (3, 1), (2, 3)])
def test_kld_loss_value_and_gradient(per_scale, M, S):
    K = 4
    pc, ps = full_tables(K, M, S)
    P = len(pc)
    gen = torch.Generator().manual_seed(M * 10 + S)
    dist = (torch.rand(2, P, 4, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    labels = kld_labels()
    got = kld_loss(dist, labels, pc, ps, K, per_scale=per_scale)
    want = naive_kld(dist, labels, pc, ps, K, per_scale)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_got, = torch.autograd.grad(got, dist)
    g_want, = torch.autograd.grad(want, dist)
    assert torch.isfinite(g_got).all()
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-12)
    # Gradient only reaches pixels of classes that are regularised (no void, no single-pixel class).
    assert (g_got[0, :, 1, 2] == 0).all()  # void pixel
    assert (g_got[0, :, 2, 4] == 0).all()  # class 2's only pixel in image 0


def test_kld_per_scale_changes_the_pairs():
    K, M, S = 4, 2, 2
    pc, ps = full_tables(K, M, S)
    dist = torch.rand(2, len(pc), 4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    a = kld_loss(dist, kld_labels(), pc, ps, K, per_scale=True)
    b = kld_loss(dist, kld_labels(), pc, ps, K, per_scale=False)
    assert not torch.allclose(a, b)
    _, _, pairs_t = kld_pair_mask(pc, ps, K, per_scale=True)
    _, _, pairs_f = kld_pair_mask(pc, ps, K, per_scale=False)
    assert int(pairs_t.sum()) == K * S * (M * (M - 1) // 2)  # within one scale only
    n = M * S
    assert int(pairs_f.sum()) == K * n * (n - 1) // 2  # every pair of a class


def test_kld_labels_at_input_resolution_are_nearest_downsampled():
    """Labels at 2× resolution made by repeating each label 2 × 2: nearest (pixel centres) gives them back."""
    K, M, S = 4, 2, 2
    pc, ps = full_tables(K, M, S)
    dist = torch.rand(2, len(pc), 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    lab = kld_labels()
    big = lab.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert big.shape == (2, 8, 10)
    got = kld_loss(dist, big, pc, ps, K, per_scale=True)
    want = naive_kld(dist, lab, pc, ps, K, per_scale=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_kld_hand_computed():
    # One class, two prototypes (same scale), two pixels.
    pc, ps = torch.tensor([0, 0]), torch.tensor([0, 0])
    lab = torch.tensor([[[0, 0]]])
    # Identical distance maps: J = 0, loss = 1.
    same = torch.tensor([[[[0.3, 1.2]], [[0.3, 1.2]]]], dtype=torch.float64)
    assert float(kld_loss(same, lab, pc, ps, 1, per_scale=True)) == pytest.approx(1.0, abs=1e-12)
    # q1 = softmax(0, ln 3) = (1/4, 3/4), q2 = (3/4, 1/4): KL both ways = ½ ln 3, J = ½ ln 3, exp(−J) = 1/√3.
    l3 = math.log(3)
    d = torch.tensor([[[[0.0, l3]], [[l3, 0.0]]]], dtype=torch.float64)
    assert float(kld_loss(d, lab, pc, ps, 1, per_scale=True)) == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    # Softmax of the distance is shift invariant per map.
    assert float(kld_loss(d + torch.tensor([5.0, -2.0], dtype=torch.float64)[None, :, None, None], lab, pc, ps, 1,
                          per_scale=True)) == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    # Different scales and per_scale=True: no pair at all → 0.
    assert float(kld_loss(d, lab, pc, torch.tensor([0, 1]), 1, per_scale=True)) == 0.0


def test_kld_no_pairs_is_zero_with_zero_gradient():
    K, M, S = 4, 2, 2
    pc, ps = full_tables(K, M, S)
    dist = torch.rand(2, len(pc), 4, 5, dtype=torch.float64, requires_grad=True)
    lab = torch.full((2, 4, 5), VOID, dtype=torch.long)
    lab[0, 0, 0] = 1  # a single pixel: not enough
    loss = kld_loss(dist, lab, pc, ps, K, per_scale=True)
    assert float(loss.detach()) == 0.0
    g, = torch.autograd.grad(loss, dist)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("per_scale", [True, False])
def test_kld_after_removing_prototypes(per_scale):
    """Unequal counts per class, classes interleaved in index order, one class with a single prototype."""
    K, M, S = 4, 3, 2
    full_c, full_s = full_tables(K, M, S)
    keep = torch.tensor([0, 1, 2, 4, 7, 9, 10, 12, 13, 16, 18, 19, 20, 23])
    pc, ps = full_c[keep], full_s[keep]
    assert torch.bincount(pc, minlength=K).tolist() == [5, 2, 4, 3]
    # Hand-built tables too (not from a layout): class 3 has one prototype, class 1 has five.
    pc2 = torch.tensor([1, 0, 1, 2, 1, 0, 3, 1, 2, 1, 0])
    ps2 = torch.tensor([0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0])
    labels = kld_labels()
    for i, (c, s) in enumerate([(pc, ps), (pc2, ps2)]):
        gen = torch.Generator().manual_seed(40 + i)
        dist = (torch.rand(2, len(c), 4, 5, generator=gen, dtype=torch.float64) * 4).requires_grad_()
        got = kld_loss(dist, labels, c, s, K, per_scale=per_scale)
        want = naive_kld(dist, labels, c, s, K, per_scale)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        g_got, = torch.autograd.grad(got, dist)
        g_want, = torch.autograd.grad(want, dist)
        torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# 4. simplex projection


@pytest.mark.parametrize("v,want", [
    ([0.5, 0.2, 0.9, -1.0], [0.3, 0.0, 0.7, 0.0]),
    ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]),
    ([0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),
    ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
    ([1.0, 1.0], [0.5, 0.5]),
    ([1.0, 1.0, 0.0], [0.5, 0.5, 0.0]),
    ([1.5, 0.5, 0.5], [1.0, 0.0, 0.0]),
    ([-5.0, -5.0, -5.0, -5.0], [0.25, 0.25, 0.25, 0.25]),
    ([3.0], [1.0]),
    ([0.1, 0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_simplex_hand_examples(v, want, dtype):
    got = project_simplex(torch.tensor(v, dtype=dtype))
    torch.testing.assert_close(got, torch.tensor(want, dtype=dtype), rtol=0, atol=1e-6)
    for g, w in zip(got.tolist(), want):
        if w == 0.0:
            if dtype == torch.float32:
                assert g == 0.0  # exact zeros in the parameters' dtype
            else:
                # float64: an entry exactly at θ can be left at round-off level (5.6e-17 for the first example),
                # exactly as the reference numpy `projection_simplex_sort` does; anything else is exactly 0.
                assert 0.0 <= g < 1e-15
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_project_simplex_random_rows_match_bisection():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, 9, generator=gen, dtype=torch.float64) * torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0],
                                                                               dtype=torch.float64)[None, :, None]
    got = project_simplex(v)
    assert got.shape == v.shape
    for a in range(6):
        for b in range(5):
            want = naive_simplex(v[a, b])
            torch.testing.assert_close(got[a, b], want, rtol=0, atol=1e-9)
            assert ((got[a, b] == 0) == (want == 0)).all()  # same support, exact zeros
    assert (got >= 0).all()
    torch.testing.assert_close(got.sum(-1), torch.ones(6, 5, dtype=torch.float64))
    assert (got == 0).any()


def test_project_simplex_float32_properties_and_idempotence():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(50, 12, generator=gen) * 0.4
    p = project_simplex(v)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50), rtol=0, atol=1e-6)
    assert (p == 0.0).sum() > 0
    pp = project_simplex(p)
    torch.testing.assert_close(pp, p, rtol=0, atol=1e-6)
    # Re-projecting a row whose float32 sum is 1 ± ulp may lift its zeros to round-off level (the exact
    # projection spreads the deficit), but never further.
    assert (pp[p == 0] <= 1e-7).all()
    # The rank order is preserved.
    for r in range(50):
        for i in range(12):
            for j in range(12):
                if v[r, i] > v[r, j]:
                    assert p[r, i] >= p[r, j]


def test_project_simplex_with_mask():
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(4, 3, 7, generator=gen, dtype=torch.float64)
    valid = torch.zeros(4, 3, 7, dtype=torch.bool)
    counts = [7, 4, 1, 2]
    for k, n in enumerate(counts):
        valid[k, :, :n] = True
    v[~valid] = 100.0  # masked entries must not take part, however large
    got = project_simplex(v, valid)
    assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))
    for k, n in enumerate(counts):
        for g in range(3):
            want = naive_simplex(v[k, g, :n])
            torch.testing.assert_close(got[k, g, :n], want, rtol=0, atol=1e-9)
            assert float(got[k, g, :n].sum()) == pytest.approx(1.0, abs=1e-12)
    # A row with no valid entry comes out all zero (and finite).
    none = project_simplex(torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(none, torch.zeros(2, 5))


# ---------------------------------------------------------------------------------------------------------
# 5. group head


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


@pytest.mark.parametrize("proto_class,K", [
    (torch.tensor(naive_layout(3, 2, 2)[0]), 3),  # equal counts, scale-major layout
    (torch.tensor([2, 0, 0, 1, 2, 0, 2, 2, 1, 0, 1, 2]), 3),  # unequal: 4, 3, 5
])
def test_group_head_matches_weighted_geometric_mean(proto_class, K):
    torch.manual_seed(0)
    G = 2
    gh = GroupHead(proto_class, K, G).double()
    counts = [len(class_members(proto_class, c)) for c in range(K)]
    # The columns of W_c are class c's prototypes in ascending global order.
    for c in range(K):
        assert gh.index[c, : counts[c]].tolist() == class_members(proto_class, c)
        assert gh.valid[c].tolist() == [j < counts[c] for j in range(max(counts))]
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        gh.weight.copy_(random_simplex_weights(K, G, counts, gen))
        gh.head.add_(torch.rand(gh.head.shape, generator=gen, dtype=torch.float64) * 0.1)
    d = torch.rand(2, len(proto_class), 3, 2, generator=gen, dtype=torch.float64) * 2
    d[0, :, 0, 0] = 0.0  # similarity at its maximum
    sim = log_similarity(d)
    groups, logits = naive_group_logits(d, proto_class, gh.weight.detach(), gh.head.detach(), K, G)
    torch.testing.assert_close(gh.group_activations(sim), groups, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gh(sim), logits, rtol=1e-10, atol=1e-9)
    # Activations of a weighted geometric mean with simplex rows lie in [1, 1e4].
    assert (groups >= 1 - 1e-12).all() and (groups <= 1e4 + 1e-6).all()


@pytest.mark.parametrize("proto_class,K", [
    (torch.tensor(naive_layout(21, 3, 4)[0]), 21),
    (torch.tensor([2, 0, 0, 1, 2, 0, 2, 2, 1, 0, 1, 2, 3]), 4),  # unequal, class 3 has a single prototype
])
def test_group_head_initialisation(proto_class, K):
    torch.manual_seed(0)
    G = 3
    gh = GroupHead(proto_class, K, G)
    counts = [len(class_members(proto_class, c)) for c in range(K)]
    for c in range(K):
        for g in range(G):
            row = gh.weight[c, g]
            n = counts[c]
            assert (row[:n] >= 0).all()
            assert float(row[:n].sum().detach()) == pytest.approx(1.0, abs=1e-5)
            assert (row[n:] == 0).all()
    want_head = torch.tensor([[1.0 if n // G == k else -0.5 for n in range(K * G)] for k in range(K)])
    torch.testing.assert_close(gh.head.data, want_head)
    assert gh.group_class.tolist() == [n // G for n in range(K * G)]


def test_group_head_threshold_used_prototypes_and_entropy():
    K, G = 3, 2
    proto_class = torch.tensor([1, 0, 2, 0, 1, 2, 0, 1, 2, 0])  # counts 4, 3, 3
    gh = GroupHead(proto_class, K, G)
    w = torch.tensor([
        [[0.03, 0.40, 0.57, 0.00], [0.50, 0.04, 0.46, 0.00]],   # class 0: slot 1 only used in group 0
        [[0.02, 0.49, 0.49, 0.0], [0.01, 0.98, 0.01, 0.0]],     # class 1 (3 slots): slot 0 dies
        [[0.049, 0.951, 0.0, 0.0], [0.30, 0.30, 0.40, 0.0]],    # class 2
    ])
    with torch.no_grad():
        gh.weight.copy_(w)
    before = gh.weight.detach().clone()
    gh.threshold(0.05)
    after = gh.weight.detach()
    for c in range(K):
        for g in range(G):
            for j in range(after.shape[-1]):
                if before[c, g, j] < 0.05:
                    assert after[c, g, j] == 0.0
                else:
                    assert after[c, g, j] == before[c, g, j]
    # Not renormalised: rows that lost mass sum to less than 1.
    sums = after.sum(-1)
    assert float(sums[0, 0]) == pytest.approx(0.97, abs=1e-6)
    assert float(sums[1, 1]) == pytest.approx(0.98, abs=1e-6)
    assert float(sums[2, 1]) == pytest.approx(1.0, abs=1e-6)
    # used_prototypes: column of W_c non-zero in any group.
    used = gh.used_prototypes()
    want_used = []
    for p, c in enumerate(proto_class.tolist()):
        j = class_members(proto_class, c).index(p)
        want_used.append(any(float(after[c, g, j]) != 0.0 for g in range(G)))
    assert used.tolist() == want_used
    assert [p for p, u in enumerate(want_used) if not u] == [0, 9]  # class 1 slot 0, class 0 slot 3
    # entropy: mean over classes and groups of −Σ w log(w + 1e-5) / log(n_c).
    ent = 0.0
    n = 0
    for c in range(K):
        n_c = len(class_members(proto_class, c))
        for g in range(G):
            ent += -sum(float(x) * math.log(float(x) + 1e-5) for x in after[c, g, :n_c]) / math.log(n_c)
            n += 1
    assert float(gh.entropy().detach()) == pytest.approx(ent / n, rel=1e-6)


def test_group_entropy_random_and_empty_class():
    """Random simplex rows, unequal counts (>= 2) and one class with no prototype (left out of the mean)."""
    gen = torch.Generator().manual_seed(7)
    counts = [5, 2, 0, 3]
    K, G = 4, 3
    valid = torch.zeros(K, max(counts), dtype=torch.bool)
    for c, n in enumerate(counts):
        valid[c, :n] = True
    w = random_simplex_weights(K, G, counts, gen, pad_value=0.3)
    got = group_entropy(w, valid)
    terms = []
    for c, n in enumerate(counts):
        if n == 0:
            continue
        for g in range(G):
            terms.append(-sum(float(x) * math.log(float(x) + 1e-5) for x in w[c, g, :n]) / math.log(n))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-6)  # log(n_c) is taken in float32
    # Uniform rows have entropy ≈ 1, one-hot rows ≈ 0.
    uni = torch.where(valid[:, None, :], 1.0 / torch.tensor(counts).clamp(min=1)[:, None, None].double(), 0.0)
    uni = uni.expand(K, G, max(counts))
    assert float(group_entropy(uni, valid)) == pytest.approx(1.0, abs=1e-4)
    one = torch.zeros(K, G, max(counts), dtype=torch.float64)
    one[:, :, 0] = 1.0
    assert abs(float(group_entropy(one, valid))) < 1e-4


def test_group_head_project_keeps_rows_on_simplex():
    proto_class = torch.tensor([2, 0, 0, 1, 2, 0, 2, 2, 1, 0])
    gh = GroupHead(proto_class, 3, 2).double()
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        gh.weight.add_(torch.randn(gh.weight.shape, generator=gen, dtype=torch.float64) * 0.3)
    raw = gh.weight.detach().clone()
    gh.project()
    for c in range(3):
        n = len(class_members(proto_class, c))
        for g in range(2):
            torch.testing.assert_close(gh.weight[c, g, :n].detach(), naive_simplex(raw[c, g, :n]), rtol=0, atol=1e-9)
            assert (gh.weight[c, g, n:] == 0).all()


# ---------------------------------------------------------------------------------------------------------
# 6. Pascal parameter counts (ResNet-101, built once per module, no weights)


PASCAL_RATES = (6, 12, 18, 24)
ASPP_PARAMS = 4 * (2048 * 64 * 9 + 64)


def pascal_cfg():
    return ModelConfig(backbone="resnet101", width=32, pretrained=False, pretrained_path=None,
                       aspp_rates=PASCAL_RATES, freeze_bn=True, msc_scales=(0.5, 0.75))


@pytest.fixture(scope="module")
def pascal_scaleprotoseg():
    torch.manual_seed(0)
    return build_model("scaleprotoseg", pascal_cfg(), 21, prototypes=3, features=64).eval()


@pytest.fixture(scope="module")
def pascal_protoseg():
    torch.manual_seed(0)
    return build_model("protoseg", pascal_cfg(), 21, prototypes=10, features=64).eval()


def numel(params):
    return sum(p.numel() for p in params)


def test_pascal_scaleprotoseg_counts(pascal_scaleprotoseg):
    m = pascal_scaleprotoseg
    assert ASPP_PARAMS == 4_718_848
    assert tuple(m.prototypes.vectors.shape) == (252, 64)
    assert m.prototypes.vectors.numel() == 16_128
    assert numel(m.aspp.parameters()) == 4_718_848
    assert m.aspp.out_channels == 256
    assert tuple(m.last_layer.shape) == (21, 252) and m.last_layer.numel() == 5_292
    assert torch.bincount(m.prototypes.proto_class, minlength=21).tolist() == [12] * 21
    assert torch.bincount(m.prototypes.proto_scale).tolist() == [63] * 4


def test_pascal_trunk_matches_torchvision_resnet101_count(pascal_scaleprotoseg):
    import torchvision

    with torch.device("meta"):  # shapes only: no weight initialisation
        tv = torchvision.models.resnet101(weights=None)
    want = numel(tv.parameters()) - numel(tv.fc.parameters())
    got = numel(pascal_scaleprotoseg.backbone.parameters())
    assert got == want
    assert 42.4e6 < got < 42.6e6


def test_pascal_group_head_counts():
    """Built on a bare prototype layer's tables (a group head does not depend on the trunk)."""
    layer = PrototypeLayer(21, 3, 4, 64)
    gh = GroupHead(layer.proto_class, 21, 3)
    assert int(gh.valid_weights().sum()) == 756 == 21 * 3 * 12
    assert gh.weight.numel() == 756
    assert tuple(gh.head.shape) == (21, 63) and gh.head.numel() == 1_323
    # Class c's 12 columns are {63 s + 3 c + m}, s = 0..3, m = 0..2 (method.md §2.5).
    for c in range(21):
        assert gh.index[c].tolist() == sorted(63 * s + 3 * c + m for s in range(4) for m in range(3))


def test_pascal_add_groups_on_model(pascal_scaleprotoseg):
    m = pascal_scaleprotoseg
    try:
        gh = m.add_groups(3)
        assert int(gh.valid_weights().sum()) == 756
        assert gh.head.numel() == 1_323
        groups = m.param_groups()
        assert numel(groups["group_weights"]) == 756 and numel(groups["group_head"]) == 1_323
    finally:
        m.group_head = None


def test_pascal_protoseg_counts(pascal_protoseg):
    m = pascal_protoseg
    assert tuple(m.prototypes.vectors.shape) == (210, 64)
    assert numel(m.aspp.parameters()) == 4_718_848
    assert m.aspp.out_channels == 64
    assert tuple(m.last_layer.shape) == (21, 210)
    assert m.prototypes.proto_scale.tolist() == [0] * 210
    assert m.prototypes.proto_class.tolist() == [p // 10 for p in range(210)]


def test_pascal_eval_output_shape(pascal_scaleprotoseg):
    """One ResNet-101 forward on CPU; MSC is switched off here to keep it cheap (MSC's eval fusion keeps the
    full-scale shape, checked on the small backbone below)."""
    m = pascal_scaleprotoseg
    assert m.group_head is None and not m.training
    msc, m.msc_scales = m.msc_scales, ()
    try:
        with torch.no_grad():
            out = m(torch.zeros(1, 3, 321, 321))
    finally:
        m.msc_scales = msc
    assert isinstance(out, dict)
    assert tuple(out["logits"].shape) == (1, 21, 41, 41)
    assert tuple(out["distances"].shape) == (1, 252, 41, 41)
    assert tuple(out["similarities"].shape) == (1, 252, 41, 41)


def test_msc_outputs_small_backbone():
    """Eval: one dict at full-scale resolution; training: full, 0.5, 0.75 and the fused max (method.md §2.3)."""
    torch.manual_seed(0)
    m = build_model("scaleprotoseg", small_cfg(msc_scales=(0.5, 0.75)), 3, prototypes=2, features=4)
    x = torch.rand(2, 3, 65, 65)
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert isinstance(out, dict) and tuple(out["logits"].shape) == (2, 3, 9, 9)
    m.train()
    outs = m(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert [tuple(o["logits"].shape[-2:]) for o in outs] == [(9, 9), (5, 5), (7, 7), (9, 9)]


def naive_released_resize(x: np.ndarray, p: float) -> np.ndarray:
    """The released MSC input resize written out pixel by pixel: bilinear, align_corners=False, driven by
    the scale factor p: output ⌊n·p⌋, source coordinate (i + 0.5)/p − 0.5 clamped at 0, step exactly 1/p."""
    C, H, W = x.shape
    oh, ow = int(np.floor(H * p)), int(np.floor(W * p))

    def taps(i, n):
        src = max((i + 0.5) / p - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        return i0, i1, src - i0

    out = np.zeros((C, oh, ow))
    for r in range(oh):
        r0, r1, a = taps(r, H)
        for c in range(ow):
            c0, c1, b = taps(c, W)
            out[:, r, c] = ((1 - a) * ((1 - b) * x[:, r0, c0] + b * x[:, r0, c1])
                            + a * ((1 - b) * x[:, r1, c0] + b * x[:, r1, c1]))
    return out


@pytest.mark.parametrize("size,p", [((9, 11), 0.5), ((9, 11), 0.75), ((13, 7), 0.75), ((21, 21), 0.5)])
def test_msc_input_resize_is_the_released_grid(size, p):
    """Every model's MSC branch sees the input on the released grid (step 1/p), which is not the grid of an
    explicit output size (step n/⌊n·p⌋)."""
    from scaleprotoseg.models.base import multi_scale

    torch.manual_seed(0)
    x = torch.rand(1, 2, *size, dtype=torch.float64)
    seen = []
    multi_scale(lambda t: seen.append(t) or t[:, :, :1, :1], x, (p,), training=True)
    ours = seen[1][0].numpy()
    want = naive_released_resize(x[0].numpy(), p)
    assert ours.shape == want.shape
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)
    by_size = F.interpolate(x, size=want.shape[1:], mode="bilinear", align_corners=False)[0].numpy()
    assert np.abs(by_size - want).max() > 1e-3  # the grid matters: an explicit size samples other pixels


@pytest.mark.parametrize("method", ["deeplab", "protoseg", "scaleprotoseg"])
def test_msc_models_use_the_released_grid(method):
    """DeepLab and both prototype models feed the 0.5 / 0.75 branches with the released resize."""
    torch.manual_seed(0)
    kwargs = {} if method == "deeplab" else {"prototypes": 2, "features": 4}
    m = build_model(method, small_cfg(msc_scales=(0.5, 0.75)), 3, **kwargs).train()
    x = torch.rand(1, 3, 43, 43)
    seen = []
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    m(x)
    assert [tuple(t.shape[-2:]) for t in seen] == [(43, 43), (21, 21), (32, 32)]
    for t, p in zip(seen[1:], (0.5, 0.75)):
        np.testing.assert_allclose(t[0].numpy(), naive_released_resize(x[0].double().numpy(), p), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# 7. pruning and state-dict round trips (small backbone)


def small_model(seed, method="scaleprotoseg", K=3, M=2, rates=(1, 2)):
    torch.manual_seed(seed)
    return build_model(method, small_cfg(aspp_rates=rates), K, prototypes=M, features=4)


def test_keep_prototypes_consistent():
    m = small_model(0).eval()
    P = m.prototypes.num_prototypes
    assert P == 12
    with torch.no_grad():
        m.last_layer.copy_(torch.randn(3, P))
    old_v = m.prototypes.vectors.detach().clone()
    old_c, old_s = m.prototypes.proto_class.clone(), m.prototypes.proto_scale.clone()
    old_ll = m.last_layer.detach().clone()
    feats = torch.rand(1, 8, 3, 3)
    old = m.head(feats)
    keep = [9, 0, 3, 11, 5, 4]  # unsorted on purpose
    m.keep_prototypes(torch.tensor(keep))
    s = sorted(keep)
    assert m.prototypes.num_prototypes == 6
    assert torch.equal(m.prototypes.vectors.detach(), old_v[s])
    assert m.prototypes.proto_class.tolist() == [int(old_c[i]) for i in s]
    assert m.prototypes.proto_scale.tolist() == [int(old_s[i]) for i in s]
    assert torch.equal(m.last_layer.detach(), old_ll[:, s])
    assert isinstance(m.last_layer, nn.Parameter) and isinstance(m.prototypes.vectors, nn.Parameter)
    new = m.head(feats)
    torch.testing.assert_close(new["distances"], old["distances"][:, s])
    want_logits = torch.zeros(1, 3, 3, 3)
    for k in range(3):
        for j, p in enumerate(s):
            want_logits[:, k] += old_ll[k, p] * old["similarities"][:, p]
    torch.testing.assert_close(new["logits"], want_logits, rtol=1e-5, atol=1e-5)
    # off-class L1 uses the new tables
    ll = m.last_layer.detach()
    want_l1 = sum(abs(float(ll[k, j])) for k in range(3) for j in range(6) if int(m.prototypes.proto_class[j]) != k)
    assert float(m.off_class_l1().detach()) == pytest.approx(want_l1, rel=1e-6)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


def test_state_dict_round_trip_after_pruning():
    m = small_model(0).eval()
    m.keep_prototypes(torch.tensor([1, 2, 6, 7, 8, 10, 11]))  # class counts 2, 3, 2 (interleaved)
    sd = m.state_dict()
    fresh = small_model(123)
    assert fresh.prototypes.num_prototypes == 12
    fresh.load_state_dict(sd)
    fresh.eval()
    _assert_same_state(m, fresh)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["logits"], m(x)["logits"])


def test_state_dict_round_trip_with_group_head():
    m = small_model(0).eval()
    m.keep_prototypes(torch.tensor([0, 2, 3, 4, 5, 7, 9, 10]))  # class counts 3, 3, 2
    gh = m.add_groups(2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        gh.weight.add_(torch.rand(gh.weight.shape, generator=gen))
    gh.project()
    gh.threshold(0.05)
    sd = m.state_dict()
    for name in ("group_head.weight", "group_head.head", "group_head.index", "group_head.valid"):
        assert name in sd
    fresh = small_model(321)
    fresh.load_state_dict(sd)
    fresh.eval()
    assert fresh.group_head is not None
    _assert_same_state(m, fresh)
    assert fresh.group_head.used_prototypes().tolist() == m.group_head.used_prototypes().tolist()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["logits"], m(x)["logits"])


def test_protoseg_state_dict_round_trip_after_pruning():
    m = small_model(0, method="protoseg", M=4).eval()
    assert m.prototypes.num_prototypes == 12 and m.aspp.out_channels == 4
    m.keep_prototypes(torch.tensor([0, 1, 5, 8, 9, 10, 11]))
    fresh = small_model(7, method="protoseg", M=4)
    fresh.load_state_dict(m.state_dict())
    fresh.eval()
    _assert_same_state(m, fresh)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["logits"], m(x)["logits"])


def test_segmenter_is_a_prototype_segmenter():
    assert isinstance(small_model(0), PrototypeSegmenter)


# ---------------------------------------------------------------------------------------------------------
# The cheaper head: per-scale distances for any prototype order, the KLD over each image's present classes.

def test_distances_with_prototypes_in_any_scale_order():
    """Tables not in the scale-major layout (e.g. a hand-edited state dict): still the naive distances."""
    torch.manual_seed(2)
    K, M, S, D = 3, 2, 4, 5
    layer = PrototypeLayer(K, M, S, D).double()
    perm = torch.randperm(layer.num_prototypes)
    layer.keep(torch.arange(layer.num_prototypes))  # clears caches; then scramble the order by hand
    layer.vectors.data = layer.vectors.data[perm]
    layer.proto_class, layer.proto_scale = layer.proto_class[perm], layer.proto_scale[perm]
    layer.__dict__.pop("_pair_cache", None)
    assert layer.scale_layout()[1] is not None  # really out of order
    feats = torch.rand(2, S * D, 3, 4, dtype=torch.float64)
    want = naive_distances(feats, layer.vectors.detach(), layer.proto_scale, D)
    torch.testing.assert_close(layer.distances(feats), want, rtol=1e-10, atol=1e-12)
    # After removing prototypes so that one scale has none left.
    keep = (layer.proto_scale != 1).nonzero().flatten()
    layer.keep(keep)
    want = naive_distances(feats, layer.vectors.detach(), layer.proto_scale, D)
    torch.testing.assert_close(layer.distances(feats), want, rtol=1e-10, atol=1e-12)


def test_present_classes_against_a_loop():
    from scaleprotoseg.losses import present_classes

    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 6, (3, 7, 9), generator=gen).to(torch.uint8)
    labels[0][labels[0] > 2] = VOID  # image 0: classes 0..2 and void
    labels[2] = VOID  # image 2: void only
    got = present_classes(labels, 6)
    for b in range(3):
        want = sorted({int(v) for v in labels[b].flatten() if int(v) < 6})
        row = [int(c) for c in got[b] if c >= 0]
        assert row == want
        assert (got[b, len(want):] == -1).all()
    assert got.shape[1] == 6


@pytest.mark.parametrize("per_scale", [True, False])
def test_kld_over_present_classes_equals_all_classes_and_naive(per_scale):
    from scaleprotoseg.losses import present_classes

    K, M, S = 7, 2, 2
    pc, ps = full_tables(K, M, S)
    gen = torch.Generator().manual_seed(8)
    labels = torch.randint(0, 3, (2, 4, 5), generator=gen)
    labels[1][labels[1] == 0] = 5  # image 1: classes 1, 2, 5; classes 3, 4, 6 absent everywhere
    labels[0, 0, :3] = VOID
    dist = (torch.rand(2, len(pc), 4, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    classes = present_classes(labels, K)
    assert classes.shape[1] == 3
    got = kld_loss(dist, labels, pc, ps, K, per_scale=per_scale, classes=classes)
    ref = kld_loss(dist, labels, pc, ps, K, per_scale=per_scale)
    want = naive_kld(dist, labels, pc, ps, K, per_scale)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    g_got, = torch.autograd.grad(got, dist)
    g_want, = torch.autograd.grad(want, dist)
    torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-12)
