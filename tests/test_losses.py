"""The KLD diversity loss, the group entropy and the present-class lists, against naive (loop) implementations
(`tests/naive.py`, from docs/method.md §3) and answers computed by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from scaleprotoseg.losses import group_entropy, kld_loss, kld_pair_mask

from .naive import VOID, naive_kld, naive_layout, random_simplex_weights


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
