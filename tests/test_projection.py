"""Projection (push), de-duplication and pruning on handcrafted features, against brute force."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaleprotoseg import projection as pj
from scaleprotoseg.models.prototypes import PrototypeLayer

VOID = 255


class FixedFeatures(nn.Module):
    """A stand-in model: image i (encoded in the input's first value) has the features `feats[i]`."""

    def __init__(self, feats, num_classes, per_class, scales, dim):
        super().__init__()
        self.feats = feats
        self.num_classes = num_classes
        self.prototypes = PrototypeLayer(num_classes, per_class, scales, dim)

    def features(self, x, training=None):
        return self.feats[int(x.flatten()[0])][None]


def loader_for(labels):
    # batches of (x, y, idx) like eval_loader's; x only carries the image index
    return Loader([(torch.full((1, 3, 2, 2), float(i)), labels[i][None], torch.tensor([i])) for i in range(len(labels))])


class Loader(list):
    @property
    def dataset(self):
        return range(len(self))


def make_case(seed=0, n_img=3, K=3, M=2, S=2, D=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.rand(S * D, h, w, generator=g) for _ in range(n_img)]
    labels = [torch.randint(0, K, (h, w), generator=g) for _ in range(n_img)]
    for lab in labels:
        lab[0, :] = VOID  # a void row in every image
        lab[lab == 2] = 0  # class 2 never appears: its prototypes have no eligible pixel
    model = FixedFeatures(feats, K, M, S, D)
    return model, feats, labels


def brute_force(model, feats, labels):
    """For each prototype: (distance, image, row, col, vector) of the nearest pixel of its class and scale."""
    P = model.prototypes
    D = P.dim
    out = []
    for p in range(P.num_prototypes):
        c, s = int(P.proto_class[p]), int(P.proto_scale[p])
        best = None
        for i, (f, lab) in enumerate(zip(feats, labels)):
            for r in range(lab.shape[0]):
                for q in range(lab.shape[1]):
                    if int(lab[r, q]) != c:
                        continue
                    v = f[s * D : (s + 1) * D, r, q]
                    d = float(((v - P.vectors[p].detach()) ** 2).sum())
                    if best is None or d < best[0]:
                        best = (d, i, r, q, v)
        out.append(best)
    return out


def test_projection_picks_the_brute_force_nearest_eligible_pixel():
    model, feats, labels = make_case()
    proj = pj.find_nearest(model, loader_for(labels), torch.device("cpu"), progress=False)
    expected = brute_force(model, feats, labels)
    for p, e in enumerate(expected):
        c = int(model.prototypes.proto_class[p])
        if e is None:  # class 2: no eligible pixel anywhere
            assert c == 2 and not bool(proj.found[p])
            assert torch.equal(proj.vectors[p], model.prototypes.vectors[p].detach())
            continue
        d, i, r, q, v = e
        assert bool(proj.found[p])
        assert int(proj.image[p]) == i and proj.position[p].tolist() == [r, q]
        assert torch.allclose(proj.distance[p], torch.tensor(d), atol=1e-5)
        assert torch.equal(proj.vectors[p], v)
        # never a void or other-class pixel
        assert int(labels[i][r, q]) == c


def test_projection_never_uses_void_even_when_it_is_nearest():
    K, M, S, D, h, w = 2, 1, 1, 2, 2, 2
    f = torch.tensor([[[0.0, 5.0], [9.0, 9.0]], [[0.0, 5.0], [9.0, 9.0]]])  # pixel (0,0) is all zeros
    lab = torch.tensor([[VOID, 1], [0, 0]])
    model = FixedFeatures([f], K, M, S, D)
    with torch.no_grad():
        model.prototypes.vectors.zero_()  # both prototypes sit exactly on the void pixel's feature
    proj = pj.find_nearest(model, loader_for([lab]), torch.device("cpu"), progress=False)
    # class 1 (prototype 1) must take (0, 1), class 0 (prototype 0) one of the bottom row, never (0, 0)
    assert proj.position[1].tolist() == [0, 1]
    assert proj.position[0].tolist()[0] == 1
    assert torch.isfinite(proj.distance).all()


def test_duplicates_keep_lowest_index_per_scale_and_vector():
    v = torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [3.0, 4.0]])
    scale = torch.tensor([0, 0, 0, 1, 0])
    # rows 0 and 1 are duplicates (same scale); row 3 has the same vector but another scale: kept
    assert pj.duplicates(v, scale).tolist() == [0, 2, 3]


def test_pruning_on_a_handcrafted_case():
    # One prototype per class, K = 2, one scale, D = 1; 8 images of 1×2 cells, 8×8 pixels per cell (16×... we
    # use labels at 8× the feature resolution so that a cell holds 8×8 pixels).
    K, D = 2, 1
    feats, labels = [], []
    # Prototype 0 (class 0) at value 0.0; prototype 1 (class 1) at value 1.0.
    # image i: left cell feature a_i, right cell 10 (far from everything)
    lefts = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    left_has_class0 = [False, True, False, False, True, False, True, True]  # nearest 6: images 0..5
    for a, has0 in zip(lefts, left_has_class0):
        feats.append(torch.tensor([[[a, 10.0]]]))
        lab = torch.ones(8, 16, dtype=torch.long)
        if has0:
            lab[3, 2] = 0  # a single pixel of class 0 inside the left cell is enough
        labels.append(lab)
    model = FixedFeatures(feats, K, 1, 1, D)
    with torch.no_grad():
        model.prototypes.vectors.copy_(torch.tensor([[0.0], [1.0]]))
    best_d, best_m = pj.nearest_patches(model, loader_for(labels), torch.device("cpu"), k=6, progress=False)
    # Prototype 0: its 6 nearest patches are the left cells of images 0..5; class 0 in images 1 and 4 → 2 matches
    assert torch.allclose(best_d[0], torch.tensor(lefts[:6]) ** 2)
    assert int(best_m[0].sum()) == 2
    # Prototype 1 (class 1): nearest are images 7..2 (values 0.7..0.2); every left cell contains class 1
    assert int(best_m[1].sum()) == 6
    keep = pj.prune_mask(best_d, best_m, threshold=3)
    assert keep.tolist() == [False, True]
    assert pj.prune_mask(best_d, best_m, threshold=2).tolist() == [True, True]


def test_activation_box_is_the_bounding_box_of_high_cells():
    h, w = 3, 4
    sim = torch.zeros(1, h * w)
    eligible = torch.zeros(1, h * w, dtype=torch.bool)
    eligible[0, [1, 2, 5, 6, 10]] = True
    sim[0, 6] = 5.0  # the single highest eligible cell: (1, 2)
    sim[0, 0] = 9.0  # higher, but not eligible
    box = pj._activation_box(sim, eligible, h, w)
    assert box.tolist() == [[1, 2, 1, 2]]


# ---------------------------------------------------------------------------------------------------------
# eligibility rules: "nearest" (cell's nearest-downsampled label) and "any" (any label pixel in the cell)


def naive_cells(label, h, w, K, rule):
    """(K, h, w) eligibility written out with loops: 'any' maps pixel (i, j) to cell (int(i / (H/h)),
    int(j / (W/w))) as the released push does; 'nearest' reads the pixel at the cell's centre (PIL NEAREST)."""
    H, W = label.shape
    out = torch.zeros(K, h, w, dtype=torch.bool)
    if rule == "any":
        for i in range(H):
            for j in range(W):
                c = int(label[i, j])
                if c < K:
                    out[c, int(i / (H / h)), int(j / (W / w))] = True
    else:
        for r in range(h):
            for q in range(w):
                c = int(label[min(int((r + 0.5) * H / h), H - 1), min(int((q + 0.5) * W / w), W - 1)])
                if c < K:
                    out[c, r, q] = True
    return out



@pytest.mark.parametrize("rule", ["any", "nearest"])
@pytest.mark.parametrize("H,W,h,w", [(8, 8, 2, 2), (37, 53, 5, 7), (321, 500, 41, 63), (41, 41, 41, 41)])
def test_class_cells_against_loops(rule, H, W, h, w):
    g = torch.Generator().manual_seed(H * W + h)
    K = 4
    label = torch.randint(0, K + 1, (H, W), generator=g)
    label[label == K] = VOID
    got = pj.class_cells(label, (h, w), K, rule)
    assert got.dtype == torch.bool and got.shape == (K, h * w)
    assert torch.equal(got.view(K, h, w), naive_cells(label, h, w, K, rule))


def test_rules_disagree_on_a_handcrafted_image():
    """Class 1 covers one corner pixel of cell (0, 0): eligible under 'any', not under 'nearest' (the cell's
    centre pixel is class 0). A prototype of class 1 therefore projects onto cell (0, 0) under 'any' and
    onto the only cell whose centre is class 1 under 'nearest'."""
    K, S, D, h, w = 2, 1, 2, 2, 2
    label = torch.zeros(8, 8, dtype=torch.long)
    label[0, 0] = 1  # a single pixel in cell (0, 0)
    label[4:8, 4:8] = 1  # all of cell (1, 1)
    feats = torch.zeros(S * D, h, w)
    feats[:, 0, 0] = torch.tensor([0.9, 0.9])  # cell (0, 0): close to the prototype
    feats[:, 1, 1] = torch.tensor([0.0, 0.0])  # cell (1, 1): far from it
    model = FixedFeatures([feats], K, 1, S, D)
    with torch.no_grad():
        model.prototypes.vectors.copy_(torch.tensor([[0.5, 0.5], [1.0, 1.0]]))  # prototype 1 is class 1's
    assert int(model.prototypes.proto_class[1]) == 1
    any_ = pj.find_nearest(model, loader_for([label]), torch.device("cpu"), progress=False, rule="any")
    near = pj.find_nearest(model, loader_for([label]), torch.device("cpu"), progress=False, rule="nearest")
    assert any_.position[1].tolist() == [0, 0] and torch.equal(any_.vectors[1], torch.tensor([0.9, 0.9]))
    assert near.position[1].tolist() == [1, 1] and torch.equal(near.vectors[1], torch.tensor([0.0, 0.0]))
    assert any_.distance[1].item() == pytest.approx(0.02) and near.distance[1].item() == pytest.approx(2.0)
    # class 0 is eligible on cells (0, 0), (0, 1), (1, 0) under both rules; void never is
    for proj in (any_, near):
        assert proj.found.all()


def test_void_is_never_eligible_under_any():
    label = torch.full((6, 6), VOID, dtype=torch.long)
    label[5, 5] = 0
    cells = pj.class_cells(label, (2, 2), 2, "any").view(2, 2, 2)
    assert cells[0].tolist() == [[False, False], [False, True]] and not cells[1].any()
    with pytest.raises(ValueError, match="projection rule"):
        pj.class_cells(label, (2, 2), 2, "majority")
