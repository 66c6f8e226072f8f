"""Every raw layout goes through the pipeline's own stages (prepare → train → project → evaluate, and
interpret where there are parts), and the notebooks run on one of them exactly as `dvc repro` runs them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from scaleprotoseg.config import load_config, set_key
from scaleprotoseg.data.prepared import PreparedDataset, read_meta
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.evaluate import evaluate_stage
from scaleprotoseg.stages.interpret import interpret
from scaleprotoseg.stages.prepare import prepare_dataset
from scaleprotoseg.stages.project import project
from scaleprotoseg.stages.train import train

from ..layouts import WRITERS, tiny_overrides

EXPECTED = {  # classes, split sizes (train, val) and which have parts
    "pascal": (21, (4, 2), True),
    "cityscapes": (19, (4, 2), True),
    "ade20k": (150, (4, 2), False),
    "coco_stuff": (182, (4, 2), False),
    "em": (2, (20, 10), False),
    "folder": (3, None, False),
}


def _params(params, dataset, raw):
    set_key(params, "experiment.dataset", dataset)
    set_key(params, f"data_sources.{dataset}.root", str(raw))
    for k, v in tiny_overrides(dataset).items():
        set_key(params, k, v)
    return params


@pytest.mark.parametrize("dataset", sorted(WRITERS))
@pytest.mark.slow  # each real layout through every stage (10-50 s each)
def test_each_layout_runs_through_the_stages(tmp_path, params, dataset):
    raw = WRITERS[dataset](tmp_path / "data" / dataset)
    params = _params(params, dataset, raw)
    prepared = tmp_path / "artifacts" / "prepared" / dataset
    meta = prepare_dataset(params, dataset, prepared)
    n_classes, sizes, has_parts = EXPECTED[dataset]
    assert meta.num_classes == n_classes and meta.has_parts == has_parts
    if sizes is not None:
        assert (len(meta.splits["train"]), len(meta.splits["val"])) == sizes
    cfg = load_config(params, method="scaleprotoseg")
    assert cfg.dataset == dataset and cfg.model.pretrained is False
    t, p = tmp_path / "t", tmp_path / "p"
    train(cfg, prepared, t, tmp_path / "r", progress=False)
    proj = project(cfg, prepared, t, p, progress=False)
    assert 1 <= proj["prototypes"] <= proj["prototypes_before"]
    out = evaluate_stage(cfg, prepared, t, p, tmp_path / "e", progress=False)
    assert set(out["metrics"]["iou"]) == set(meta.classes)
    assert 0.0 <= out["metrics"]["miou"] <= 100.0
    info = interpret(cfg, prepared, p, tmp_path / "i", progress=False)
    # faithfulness on every layout, your own folder included (no parts needed); its own map against random
    assert {"faith_deletion_auc", "faith_insertion_auc", "faith_random_deletion_auc"} <= set(info)
    assert 0.0 <= info["faith_deletion_auc"] <= 1.5 and 0.0 <= info["faith_insertion_auc"] <= 1.5
    if has_parts:
        val = PreparedDataset(prepared, "val")
        assert any(val.parts(i).any() for i in range(len(val)))
        assert info["consistency_evaluated"] > 0 and not math.isnan(info["stability"])


@pytest.mark.slow  # papermill
def test_notebooks_run_the_pascal_layout_like_dvc_does(tmp_path, params):
    """papermill runs the stage notebooks with the parameters dvc.yaml passes (smoke False), on a params file
    that names a raw VOC + Pascal-Panoptic-Parts folder."""
    raw = WRITERS["pascal"](tmp_path / "data" / "pascal")
    params = _params(params, "pascal", raw)
    set_key(params, "experiment.methods", ["scaleprotoseg"])
    set_key(params, "experiment.groups", [])
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    art, rep = tmp_path / "artifacts", tmp_path / "reports"
    m = "scaleprotoseg"
    runs = [
        ("10_prepare_data", {"dataset": "pascal", "data_root": art / "prepared/pascal", "report_dir": rep / "prepare"}),
        ("20_train", {"dataset": "pascal", "method": m, "data_root": art / "prepared/pascal", "out_dir": art / "train" / m,
                      "report_dir": rep / "train" / m}),
        ("30_project_prototypes", {"dataset": "pascal", "method": m, "data_root": art / "prepared/pascal",
                                   "train_dir": art / "train" / m, "out_dir": art / "project" / m,
                                   "report_dir": rep / "project" / m}),
        ("40_evaluate", {"dataset": "pascal", "method": m, "data_root": art / "prepared/pascal",
                         "train_dir": art / "train" / m, "project_dir": art / "project" / m,
                         "report_dir": rep / "evaluate" / m}),
        ("50_interpret", {"dataset": "pascal", "method": m, "data_root": art / "prepared/pascal",
                          "project_dir": art / "project" / m, "report_dir": rep / "interpret" / m}),
    ]
    for nb, extra in runs:
        args = [sys.executable, "-m", "papermill", "--no-progress-bar", "--log-level", "WARNING",
                str(repo_root() / "notebooks" / f"{nb}.ipynb"), str(tmp_path / f"{nb}.ipynb"),
                "-p", "smoke", "False", "-p", "params_path", str(params_path)]
        for k, v in extra.items():
            args += ["-p", k, str(v)]
        res = subprocess.run(args, capture_output=True, text=True, cwd=repo_root(), timeout=600)
        assert res.returncode == 0, f"{nb}: {res.stderr[-3000:]}"
    metrics = yaml.safe_load((rep / "evaluate" / m / "summary.json").read_text())
    assert set(metrics["iou"]) == set(read_meta(art / "prepared/pascal").classes)
    headline = yaml.safe_load((rep / "evaluate" / m / "metrics.json").read_text())
    assert set(headline) == {"miou", "pixel_acc", "prototypes"} and headline["miou"] == metrics["miou"]
    assert headline["pixel_acc"] == metrics["pixel_accuracy"]
    interp = yaml.safe_load((rep / "interpret" / m / "summary.json").read_text())
    assert interp["consistency_evaluated"] > 0
    assert np.isfinite(interp["stability"])
    assert {"consistency", "stability"} <= set(yaml.safe_load((rep / "interpret" / m / "metrics.json").read_text())) <= {
        "consistency", "stability", "del_auc", "ins_auc"}
    params = yaml.safe_load((rep / "evaluate" / m / "dvclive" / "params.yaml").read_text())
    assert params["dataset"] == "pascal" and params["method"] == m  # the run's params through DVCLive
    usage = json.loads((rep / "interpret" / m / "dvclive" / "plots" / "custom" / "scale_usage.json").read_text())
    assert abs(sum(r["share %"] for r in usage) - 100) < 1e-3


def test_the_preview_shrinks_each_tile_and_keeps_the_masks_colours(tiny_dataset, monkeypatch):
    """Tiles above PREVIEW_SIDE are shrunk (Cityscapes' full-size grid was 48 MB in the notebook); at or below it
    the preview is the samples at their own size, as a naive grid built here."""
    from skimage.color import label2rgb

    from scaleprotoseg.data.prepared import VOID
    from scaleprotoseg.stages import prepare

    ds = PreparedDataset(tiny_dataset, "train")
    full = np.asarray(prepare.dataset_preview(tiny_dataset, "train", n=3, seed=1))
    idx = np.sort(np.random.default_rng(1).choice(len(ds), size=3, replace=False))
    pad = [(0, 0), (0, 4), (0, 0)]
    naive = np.concatenate([
        np.concatenate([np.pad(ds.image(i), pad, constant_values=255) for i in idx], 1),
        np.concatenate([np.pad((255 * label2rgb(ds.label(i), bg_label=VOID, bg_color=(0, 0, 0))).astype(np.uint8),
                               pad, constant_values=255) for i in idx], 1),
        np.concatenate([np.pad((255 * label2rgb(ds.parts(i), bg_label=0, bg_color=(1, 1, 1))).astype(np.uint8),
                               pad, constant_values=255) for i in idx], 1)], 0)
    assert np.array_equal(full, naive)

    h, w = ds.image(idx[0]).shape[:2]
    side = max(h, w) // 3
    monkeypatch.setattr(prepare, "PREVIEW_SIDE", side)
    small = np.asarray(prepare.dataset_preview(tiny_dataset, "train", n=3, seed=1))
    th, tw = round(h * side / max(h, w)), round(w * side / max(h, w))
    assert small.shape == (3 * th, 3 * (tw + 4), 3)
    for row in (1, 2):  # the masks: nearest, so no colour that the full-size masks lack
        colours = lambda a: {tuple(v) for v in a.reshape(-1, 3)}  # noqa: E731
        assert colours(small[row * th:(row + 1) * th]) <= colours(full[row * h:(row + 1) * h])
