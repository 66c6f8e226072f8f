"""Interpretability metrics on handcrafted activation maps and part masks, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scaleprotoseg import interpretability as it
from scaleprotoseg.models.prototypes import GroupHead, prototype_counts


def test_part_made_of_two_components_gives_two_keypoints():
    parts = np.zeros((10, 10), np.uint8)
    parts[1:3, 1:3] = 1  # component A, centroid (1.5, 1.5) → rounds to (2, 2)
    parts[6:9, 6:9] = 1  # component B, centroid (7, 7)
    parts[4, 4] = 2
    mask = np.ones((10, 10), bool)
    kp = it.part_keypoints(parts, mask)
    assert sorted(kp) == [1, 2]
    assert sorted(map(tuple, kp[1].tolist())) == [(2, 2), (7, 7)]
    assert kp[2].tolist() == [[4, 4]]
    # diagonal neighbours are one 8-connected component
    diag = np.zeros((5, 5), np.uint8)
    diag[0, 0] = diag[1, 1] = diag[2, 2] = 3
    assert it.part_keypoints(diag, np.ones((5, 5), bool))[3].tolist() == [[1, 1]]
    # parts outside the class mask do not count
    assert it.part_keypoints(parts, np.zeros((10, 10), bool)) == {}


def test_quantile_region_is_taken_over_the_class_mask_only():
    act = torch.arange(16.0).reshape(4, 4)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True  # activations 0, 1, 4, 5
    region = it.quantile_region(act, mask, q=0.8)
    # 0.8-quantile of [0, 1, 4, 5] (linear) = 4.4 → only the pixel with 5 qualifies; nothing outside the mask
    assert region.nonzero().tolist() == [[1, 1]]
    assert not it.quantile_region(act, torch.zeros_like(mask), 0.8).any()


def _presence_for(region_pixels, parts, mask, n_parts=3):
    region = torch.zeros(1, *parts.shape, dtype=torch.bool)
    for r, c in region_pixels:
        region[0, r, c] = True
    return it.presence(region, it.part_keypoints(parts, mask), n_parts)[0]


def test_presence_region_on_one_part_absent_part_and_missed_parts():
    parts = np.zeros((6, 6), np.uint8)
    parts[0:2, 0:2] = 1  # centroid (0.5, 0.5) → rounds to (0, 0) (numpy rounds half to even)
    parts[4:6, 4:6] = 2  # centroid (4.5, 4.5) → (4, 4)
    mask = np.ones((6, 6), bool)
    # a region exactly on part 1: present 1, part 2 visible but not present, part 3 absent from the image
    p = _presence_for([(0, 0), (0, 1), (1, 0), (1, 1)], parts, mask)
    assert p[0] == 1 and p[1] == 0 and np.isnan(p[2])
    # a region missing every part
    p = _presence_for([(2, 3)], parts, mask)
    assert p[0] == 0 and p[1] == 0 and np.isnan(p[2])


def test_consistency_threshold_is_inclusive_and_absent_parts_do_not_count():
    counts = it.PartCounts.zeros(3, 2)
    # prototype 0: part 1 present in 4 of 5 images → f = 0.8 = τ → consistent (≥)
    for k in range(5):
        counts.add(np.array([0]), np.array([[1.0 if k < 4 else 0.0, np.nan]]))
    # prototype 1: present in 3 of 5 → 0.6 → not consistent; part 2 is never visible, so it never counts
    for k in range(5):
        counts.add(np.array([1]), np.array([[1.0 if k < 3 else 0.0, np.nan]]))
    # prototype 2: its region misses every part → f = 0 → not consistent
    for k in range(4):
        counts.add(np.array([2]), np.array([[0.0, 0.0]]))
    out = it.consistency_score(counts, np.ones(3, bool), tau=0.8)
    assert out["per_prototype_best"].tolist() == pytest.approx([0.8, 0.6, 0.0])
    assert out["consistency"] == pytest.approx(100 / 3)
    # evaluated on a subset (the grouped model's used prototypes)
    assert it.consistency_score(counts, np.array([True, False, False]))["consistency"] == 100.0
    # a prototype whose class never shows a part is not evaluated
    empty = it.PartCounts.zeros(2, 2)
    empty.add(np.array([0]), np.array([[1.0, 1.0]]))
    res = it.consistency_score(empty, np.ones(2, bool))
    assert res["consistency_evaluated"] == 1 and res["consistency_no_visible_part"] == 1


def test_stability_is_100_with_zero_noise_and_counts_changes():
    counts = it.PartCounts.zeros(2, 3)
    pres = np.array([[1.0, 0.0, np.nan], [0.0, 0.0, 1.0]])
    for _ in range(3):
        counts.add(np.array([0, 1]), pres, pres.copy())
    assert it.stability_score(counts, np.ones(2, bool))["stability"] == 100.0
    noisy = np.array([[1.0, 0.0, np.nan], [0.0, 1.0, 1.0]])  # prototype 1 changes once in 4 images
    counts.add(np.array([0, 1]), pres, noisy)
    s = it.stability_score(counts, np.ones(2, bool))
    assert s["per_prototype_stability"].tolist() == pytest.approx([1.0, 0.75])
    assert s["stability"] == pytest.approx(87.5)


def test_stability_through_the_model_path_is_100_without_noise():
    # The same maps on x and x + 0 give the same regions and presence vectors.
    parts = np.zeros((8, 8), np.uint8)
    parts[:4] = 1
    parts[4:] = 2
    mask = torch.ones(8, 8, dtype=torch.bool)
    act = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    kp = it.part_keypoints(parts, mask.numpy())
    a = it.presence(it.quantile_region(act, mask), kp, 2)
    b = it.presence(it.quantile_region(act.clone(), mask), kp, 2)
    counts = it.PartCounts.zeros(3, 2)
    counts.add(np.arange(3), a, b)
    assert it.stability_score(counts, np.ones(3, bool))["stability"] == 100.0


def test_sparsity_counts_of_a_known_weight_matrix():
    class Model:  # the attributes prototype_counts reads
        pass

    from scaleprotoseg.models.prototypes import PrototypeLayer

    m = Model()
    m.prototypes = PrototypeLayer(2, 2, 1, 3)  # 4 prototypes: 0, 1 → class 0; 2, 3 → class 1
    gh = GroupHead(m.prototypes.proto_class, 2, groups=2)
    with torch.no_grad():
        gh.weight.copy_(torch.tensor([
            [[0.6, 0.0], [1.0, 0.0]],  # class 0: prototype 1 unused; 2 of 4 weights zero
            [[0.5, 0.5], [0.0, 1.0]],  # class 1: both used; 1 of 4 zero
        ]))
    m.group_head = gh
    out = prototype_counts(m)
    assert out["prototypes"] == 4 and out["prototypes_used"] == 3 and out["prototypes_used_%"] == 75.0
    assert out["group_weights_zero_%"] == pytest.approx(100 * 3 / 8)
    assert out["nonzero_per_group"] == pytest.approx((1 + 1 + 2 + 1) / 4)


def test_overlap_iou_of_known_masks():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    c = torch.zeros(4, 4, dtype=torch.bool)
    a[0, :2] = True  # 2 px
    b[0, 1:3] = True  # 2 px, 1 shared with a
    c[3, 3] = True  # disjoint
    inter, union = it.pair_overlap(torch.stack([a, b, c]))
    # pairs (a,b): I 1, U 3; (a,c): 0, 3; (b,c): 0, 3
    assert (inter, union) == (1.0, 9.0)
    assert it.pair_overlap(torch.stack([a]))[1] == 0.0


def test_binarise_top_uses_each_maps_own_percentile():
    maps = torch.stack([torch.arange(100.0).reshape(10, 10), -torch.arange(100.0).reshape(10, 10)])
    b = it.binarise_top(maps, 95.0)
    assert b[0].sum() == 5 and b[0].flatten()[-5:].all()
    assert b[1].sum() == 5 and b[1].flatten()[:5].all()


def test_group_overlap_of_classes_past_the_uint8_range_of_c_times_groups(params):
    """ADE20K / COCO-Stuff class ids (uint8 labels) times the groups per class passed 255 and wrapped: class 85's
    groups (85·3 = 255 to 258) were an empty slice (a crash), class 90's another class's groups (270 → 14). The
    overlap of each class present must be that of its own groups, computed here from the model directly."""
    from scaleprotoseg.data.prepared import DatasetMeta
    from scaleprotoseg.data.transforms import eval_transform

    from .explain.tiny import tiny_model

    K = 100
    model, cfg = tiny_model(params, "scaleprotoseg_groups", K, seed=3)
    G = model.group_head.groups
    assert 86 * G > 255
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    label = np.full((40, 48), 10, np.uint8)
    label[:, :16], label[:20, 16:32] = 85, 90
    meta = DatasetMeta("many", tuple(f"c{k}" for k in range(K)), {"val": ("a",)})
    ds = type("DS", (), {"meta": meta, "__len__": lambda self: 1, "sample": lambda self, i: (image, label)})()
    names = [f"p{p}" for p in range(model.prototypes.num_prototypes)]
    res = it.evaluate_interpretability(model, ds, cfg.data, torch.device("cpu"), seed=0, names=names)
    x = eval_transform(image, cfg.data.eval_size, cfg.data.eval_short_side, cfg.data.mean, cfg.data.std)[None]
    acts = model.group_head.group_activations(it.similarity_maps(model, x)[None])[0]
    for c in (10, 85, 90):
        I, U = it.pair_overlap(it.binarise_top(it.upsample(acts[c * G:(c + 1) * G], label.shape)))
        assert res.overlap.loc[f"c{c}", "group overlap %"] == pytest.approx(100 * I / U)
    assert np.isnan(res.overlap.loc["c11", "group overlap %"])
