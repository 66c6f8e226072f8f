"""Peak memory of the per-image passes does not grow with the number of images (tools/scaling.py, at a
small size; the README shows the true sizes).

Each stage runs in a process of its own on 2 and on 16 training and validation images of 256 × 320 in
Pascal's download layout, and its peak resident memory may grow by less than 40 MB from 2 to 16 images. A
pass that kept each image's logits (21 × 256 × 320 float32: 6.9 MB) would grow by about 100 MB and fail; one
that kept only each image's int64 prediction (0.7 MB) would grow by about 9 MB and pass: the bound catches
per-image tensors of the size of a model's output, not a few bytes per image."""

from __future__ import annotations

import pytest

from scaleprotoseg.tools.scaling import scaling, small_trunk

pytestmark = pytest.mark.slow  # one process per stage and size (about a minute)

GROWTH_MB = 40


def test_peak_memory_of_prepare_projection_and_evaluation_is_flat_in_the_images(tmp_path):
    extra = {**small_trunk("pascal"), "presets.pascal.runtime.num_workers": 0}
    rows = scaling("pascal", tmp_path, base=2, factors=(1, 8), size=(256, 320), extra=extra,
                   stages=("prepare", "project", "evaluate"), log=lambda *a: None)
    by = {(r["stage"], r["factor"]): r for r in rows}
    assert set(by) == {(s, f) for s in ("prepare", "project", "evaluate") for f in (1, 8)}
    assert by[("evaluate", 8)]["images"] == 8 * by[("evaluate", 1)]["images"] == 16
    assert by[("project", 8)]["images"] == 16
    for stage in ("prepare", "project", "evaluate"):
        small, large = by[(stage, 1)]["max_rss_mb"], by[(stage, 8)]["max_rss_mb"]
        assert large - small < GROWTH_MB, f"{stage}: peak RSS {small} MB on 2 images, {large} MB on 16"

