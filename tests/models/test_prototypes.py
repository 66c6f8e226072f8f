"""Prototype layer, simplex projection, group head, pruning and state-dict round trips.

Every check compares the package against an independent, naive (loop) implementation (`tests/naive.py`,
from docs/method.md §2.5–§2.7) or against answers computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scaleprotoseg.models.build import build_model
from scaleprotoseg.models.prototypes import (
    GroupHead,
    PrototypeLayer,
    PrototypeSegmenter,
    class_connection,
    log_similarity,
    project_simplex,
)

from ..naive import (
    class_members,
    naive_distances,
    naive_group_logits,
    naive_layout,
    naive_simplex,
    random_simplex_weights,
    small_cfg,
)


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
