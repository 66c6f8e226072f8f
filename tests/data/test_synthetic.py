"""The embedded synthetic dataset: determinism, label/part consistency, scale range, context pair, format."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import skimage
from scipy import ndimage

from scaleprotoseg.data.prepared import VOID, PreparedDataset, read_meta
from scaleprotoseg.data.synthetic import (
    BACKGROUND_TEXTURES,
    CLASSES,
    MIN_VISIBLE,
    PART_TEXTURES,
    PARTS,
    TEXTURES,
    SyntheticSpec,
    dataset_meta,
    generate,
    generate_sample,
    render_sample,
    sample_objects,
    texture_path,
    validate_spec,
)
from scaleprotoseg.errors import ConfigError

SPEC = SyntheticSpec()
K = len(CLASSES)


@pytest.fixture(scope="module")
def rendered():
    """120 default train samples (under a second), rendered once for the tests that look at many images."""
    return [render_sample(SPEC, i, "train") for i in range(120)]


def test_classes_and_parts_are_consistent():
    assert CLASSES[0] == "background" and len(CLASSES) >= 6
    assert set(PARTS) == set(CLASSES[1:])
    assert all(2 <= len(PARTS[c]) <= 4 for c in PARTS)
    assert set(PART_TEXTURES) == set(PARTS) and all(set(PART_TEXTURES[c]) == set(PARTS[c]) for c in PARTS)


def test_textures_ship_inside_scikit_image_and_background_differs_from_parts():
    data_dir = Path(skimage.__file__).parent / "data"
    for name in TEXTURES:
        path = texture_path(name)
        assert path.parent == data_dir and path.is_file(), name
    used_by_parts = {t for per_class in PART_TEXTURES.values() for t in per_class.values()}
    assert used_by_parts <= set(TEXTURES)
    part_files = {TEXTURES[t].file for t in used_by_parts}
    assert not part_files & {TEXTURES[t].file for t in BACKGROUND_TEXTURES}


def test_deterministic_and_seed_dependent():
    a = generate_sample(SPEC, 3, "train")
    b = generate_sample(SPEC, 3, "train")
    for x, y in zip(a, b):
        assert x.dtype == np.uint8 and np.array_equal(x, y)
    assert a[0].shape == (SPEC.image_size, SPEC.image_size, 3) and a[1].shape == a[2].shape == a[0].shape[:2]
    assert not np.array_equal(generate_sample(SyntheticSpec(seed=1), 3, "train")[0], a[0])
    assert not np.array_equal(generate_sample(SPEC, 3, "val")[0], a[0])
    assert not np.array_equal(generate_sample(SPEC, 4, "train")[0], a[0])


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        generate_sample(SPEC, 0, "project")


def test_label_and_part_values(rendered):
    for s in rendered:
        values = set(np.unique(s.label).tolist())
        assert values <= set(range(K)) | {VOID}
        assert VOID in values  # void band present by default
        no_part = (s.label == 0) | (s.label == VOID)
        assert not s.parts[no_part].any()
        for c in range(1, K):
            region = s.label == c
            if region.any():
                ids = s.parts[region]
                assert ids.min() >= 1 and ids.max() <= len(PARTS[CLASSES[c]]), CLASSES[c]


def test_void_band_is_a_thin_border_inside_objects():
    thin = render_sample(SyntheticSpec(void_width=0), 5, "train")
    assert VOID not in thin.label
    for width in (1, 2):
        band = render_sample(SyntheticSpec(void_width=width), 5, "train")
        assert np.array_equal(band.image, thin.image)  # the void band changes labels, never pixels
        void = band.label == VOID
        assert void.any()
        assert np.array_equal(band.label[~void], thin.label[~void])
        assert (thin.label[void] > 0).all()  # inside objects, never on background
        # every void pixel lies within `width` px (square) of a pixel showing another object or background
        size = 2 * width + 1
        inst = thin.instances
        near_other = (ndimage.maximum_filter(inst, size, mode="nearest") != inst) | (
            ndimage.minimum_filter(inst, size, mode="nearest") != inst
        )
        assert near_other[void].all()
        # and the band is thin: object interiors keep most of their pixels
        assert void.sum() < 0.6 * (thin.label > 0).sum()


def test_objects_are_visible_and_counted(rendered):
    for s in rendered:
        assert SPEC.min_objects <= len(s.objects) <= SPEC.max_objects
        for k, obj in enumerate(s.objects, start=1):
            area = int((obj.mask > 0).sum())
            shown = s.instances == k
            assert shown.sum() >= MIN_VISIBLE * area
            assert (s.label[shown] == obj.cls).sum() > 0  # survives the void band
            assert SPEC.min_scale <= obj.scale <= SPEC.max_scale
        shown_objects = [((s.instances == k) & (s.label != VOID)).any() for k in range(1, len(s.objects) + 1)]
        assert sum(shown_objects) >= SPEC.min_objects


def test_all_classes_appear(rendered):
    seen = set()
    for s in rendered[:40]:
        seen |= set(np.unique(s.label).tolist())
    assert seen >= set(range(K))


def test_object_sizes_span_the_scale_range():
    assert SPEC.max_scale / SPEC.min_scale >= 4
    sides, scales = defaultdict(list), defaultdict(list)
    for i in range(SPEC.n_train):
        for obj in sample_objects(SPEC, i, "train"):
            sides[obj.name].append(max(obj.height, obj.width))
            scales[obj.name].append(obj.scale)
    for name in CLASSES[1:]:
        # the design range is 4x; over 200 images each class gets within 5% of both ends
        assert max(sides[name]) / min(sides[name]) >= 3.8, name
        assert max(scales[name]) / min(scales[name]) >= 3.8, name
        # and sizes are spread over the range, not bunched at the ends (log-uniform: ~half below the midpoint)
        below = np.mean(np.log(scales[name]) < np.log(SPEC.min_scale * SPEC.max_scale) / 2)
        assert 0.3 < below < 0.7, name


def test_tower_and_bridge_share_parts_and_textures_but_not_arrangement(rendered):
    assert PARTS["tower"] == PARTS["bridge"] and PART_TEXTURES["tower"] == PART_TEXTURES["bridge"]
    colours = defaultdict(list)
    aspects = defaultdict(list)
    for s in rendered:
        for obj in s.objects:
            if obj.name in ("tower", "bridge"):
                aspects[obj.name].append(obj.height / obj.width)
        for name in ("tower", "bridge"):
            c = CLASSES.index(name)
            for p, part in enumerate(PARTS[name], start=1):
                pix = s.image[(s.label == c) & (s.parts == p)]
                if len(pix) >= 10:
                    colours[name, part].append(pix.astype(float).mean(0))
    mean = {k: np.mean(v, axis=0) for k, v in colours.items()}
    assert all(len(colours[k]) >= 20 for k in colours) and len(colours) == 4
    same_part = np.linalg.norm(mean["tower", "middle"] - mean["bridge", "middle"])
    other_part = np.linalg.norm(mean["tower", "middle"] - mean["tower", "end"])
    assert same_part < 0.35 * other_part  # locally alike across the classes, distinct across the parts
    assert np.allclose(aspects["tower"], 3.0) and np.allclose(aspects["bridge"], 1 / 3)


def test_tower_and_bridge_blocks_are_identical_squares():
    spec = SyntheticSpec(max_objects=4)
    for i in range(60):
        for obj in sample_objects(spec, i, "train"):
            if obj.name == "tower":
                b = obj.width
                assert obj.height == 3 * b
                assert np.array_equal(obj.mask, np.repeat([1, 2, 1], b)[:, None].repeat(b, 1))
            elif obj.name == "bridge":
                b = obj.height
                assert obj.width == 3 * b
                assert np.array_equal(obj.mask, np.repeat([1, 2, 1], b)[None, :].repeat(b, 0))


def test_car_wheels_are_one_part_in_two_pieces():
    for i in range(60):
        for obj in sample_objects(SPEC, i, "train"):
            if obj.name == "car":
                _, n = ndimage.label(obj.mask == PARTS["car"].index("wheel") + 1)
                assert n == 2
                return
    pytest.fail("no car in 60 samples")


def test_meta_and_ids():
    meta = dataset_meta(SPEC)
    assert meta.name == "embedded" and meta.classes == CLASSES and meta.projection_split == "train"
    assert set(meta.splits) == {"train", "val"}
    assert meta.splits["train"][0] == "train_0000" and len(meta.splits["val"]) == SPEC.n_val
    assert meta.parts == PARTS
    meta = dataset_meta(SyntheticSpec(n_project=10))
    assert meta.projection_split == "project" and meta.splits["project"] == meta.splits["train"][:10]


def test_generate_writes_the_prepared_format(tmp_path):
    spec = SyntheticSpec(seed=7, image_size=64, n_train=3, n_val=2, n_project=2)
    meta = generate(spec, tmp_path / "embedded")
    assert read_meta(tmp_path / "embedded") == meta
    for split, n in (("train", 3), ("val", 2)):
        ds = PreparedDataset(tmp_path / "embedded", split)
        assert len(ds) == n
        for i in range(n):
            image, label, parts = generate_sample(spec, i, split)
            assert np.array_equal(ds.image(i), image)
            assert np.array_equal(ds.label(i), label)
            assert np.array_equal(ds.parts(i), parts)
    assert PreparedDataset(tmp_path / "embedded", "project").ids == ("train_0000", "train_0001")


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 16),
        ("image_size", 128.0),
        ("n_train", 0),
        ("n_val", 0),
        ("n_project", 201),
        ("n_project", -1),
        ("min_objects", 0),
        ("min_objects", 5),
        ("min_scale", 0.0),
        ("max_scale", 0.5),
        ("void_width", -1),
        ("seed", -3),
    ],
)
def test_validate_spec_names_the_field(field, value, tmp_path):
    spec = SyntheticSpec(**{field: value})
    with pytest.raises(ConfigError, match=rf"embedded\.{field}"):
        validate_spec(spec)
    with pytest.raises(ConfigError):
        generate(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_default_spec_is_valid():
    validate_spec(SPEC)
    validate_spec(SyntheticSpec(image_size=32, min_objects=1, max_objects=1, void_width=0))
