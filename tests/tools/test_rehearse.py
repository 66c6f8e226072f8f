"""The rehearsal (tools/rehearse.py): the raw layouts at true sizes read by the real readers, the counts it
shortens and only those, and the whole mechanism (a copy, the real DVC stages one by one, measured) at tiny
size. The true sizes themselves run by hand (`make rehearse`; README, "Rehearsal at true sizes")."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import yaml

from scaleprotoseg.config import load_config, read_params, set_key
from scaleprotoseg.data.prepared import PreparedDataset
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.prepare import prepare_dataset
from scaleprotoseg.tools import raw_layouts, rehearse

CLASSES = {"pascal": 21, "cityscapes": 19, "ade20k": 150, "coco_stuff": 182, "em": 2}


@pytest.mark.parametrize("dataset", sorted(CLASSES))
def test_each_layout_is_read_by_its_reader_with_every_class(tmp_path, params, dataset):
    h, w = raw_layouts.SIZES[dataset]
    f = 4 if dataset == "cityscapes" else 2
    size = (h // f, w // f)  # a half (Cityscapes: a quarter) of the true size keeps this fast
    n_train = max(4, -(-CLASSES[dataset] // raw_layouts.tiles(size)))  # enough tiles for every class
    raw = raw_layouts.write(dataset, tmp_path / "raw", n_train, 2, size)
    set_key(params, f"data_sources.{dataset}.root", str(raw))
    meta = prepare_dataset(params, dataset, tmp_path / "prepared")
    assert meta.num_classes == CLASSES[dataset]
    train = PreparedDataset(tmp_path / "prepared", "train")
    seen = set()
    for i in range(len(train)):
        assert train.image(i).shape[:2] == size
        seen |= set(np.unique(train.label(i)).tolist())
    assert seen - {255} == set(range(CLASSES[dataset]))  # every class has pixels to project prototypes on
    assert len(meta.splits["val"]) == (10 if dataset == "em" else 2)
    if dataset in ("pascal", "cityscapes"):  # part annotations for the consistency and stability
        val = PreparedDataset(tmp_path / "prepared", "val")
        assert meta.has_parts and all(val.parts(i).any() for i in range(len(val)))


def test_true_sizes_are_the_papers():
    assert raw_layouts.SIZES == {"pascal": (375, 500), "cityscapes": (1024, 2048), "ade20k": (512, 683),
                                 "coco_stuff": (480, 640), "em": (512, 512)}


@pytest.mark.parametrize("preset", rehearse.PRESETS)
def test_only_the_counts_are_shortened(preset):
    params = read_params(repo_root() / "params.yaml")
    short = rehearse.rehearsal_params(read_params(repo_root() / "params.yaml"), preset, 7)
    for method in ("deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups"):
        full = load_config(params, dataset=preset, method=method)
        cut = load_config(short, dataset=preset, method=method, seed=7)
        assert cut.model == full.model and cut.data == full.data and cut.precision == full.precision
        assert (cut.train.batch_size, cut.train.accumulation) == (full.train.batch_size, full.train.accumulation)
        assert cut.eval.batch_size == full.eval.batch_size
        for k in rehearse.PHASE_KEYS[method]:  # one optimiser update per phase; a skipped phase stays skipped
            assert getattr(cut.train, k) == (full.train.accumulation if getattr(full.train, k) else 0)
    assert short["experiment"]["dataset"] == preset and short["experiment"]["seeds"] == [7]


@pytest.mark.slow  # the real DVC pipeline on a copy of the repository (about a minute)
def test_the_rehearsal_measures_every_stage_of_the_real_pipeline(tmp_path):
    from scaleprotoseg.stages.smoke import shrink

    extra = {k: v for k, v in shrink("em", methods=("deeplab",)).items() if not k.endswith(("steps", "log_every"))}
    extra.update({"experiment.methods": ["deeplab"], "experiment.groups": []})
    r = rehearse.rehearse("em", tmp_path, n_train=2, size=(32, 32), extra=extra)
    names = [s.stage for s in r.stages]
    seed = 20220227
    assert names[:2] == ["check", "prepare"] and names.index(f"train@deeplab-{seed}") < names.index(f"evaluate@deeplab-{seed}")
    assert set(names) == {"check", "prepare", "report", *(f"{s}@deeplab-{seed}" for s in
                                                           ("train", "project", "evaluate", "interpret", "package"))}
    for s in r.stages:  # (the largest process's peak here includes this pytest process's pages, forked with it)
        assert s.seconds > 0 and s.max_rss_mb > 0 and s.peak_pss_mb > 0 and s.gpu_peak_mb is None
    train = next(s for s in r.stages if s.stage.startswith("train@"))
    assert (train.units, train.unit) == (1, "step") and train.output_mb > 0 and train.largest_file.endswith(".pt")
    copy = yaml.safe_load((tmp_path / "em" / "repo" / "params.yaml").read_text())
    assert copy["experiment"]["dataset"] == "em" and copy["presets"]["em"]["deeplab"]["steps"] == 1
    rehearse.save(r, tmp_path)
    back = rehearse.load(tmp_path / "em.json")
    assert back == r and json.loads((tmp_path / "em.json").read_text())["preset"] == "em"
    text = rehearse.overview([back])
    assert "| train deeplab | train " in text and "whole pipeline" in text  # the phase's own seconds per step
    assert train.detail.startswith("train ") and train.detail.endswith(" s/step")
    assert (tmp_path / "em.md").read_text().startswith("**em** (32×32 images")
    assert back.complete and "stopped" not in rehearse.table(back)

    # Interrupted after `interpret` (the records of the stages before it kept, their outputs on disk), the stages
    # after it never run (outputs absent); and the record of `evaluate` lost although DVC has it: --resume keeps
    # the recorded stages, shows `evaluate` as finished without a measurement, and runs and measures the rest.
    cut_at = names.index(f"interpret@deeplab-{seed}") + 1
    kept, rest = names[:cut_at], names[cut_at:]
    assert rest  # package, report
    cut = rehearse.Rehearsal(**{**asdict(back), "complete": False, "stages": [
        rehearse.StageRun(**s) for s in asdict(back)["stages"]
        if s["stage"] in kept and not s["stage"].startswith("evaluate@")]})
    rehearse.save(cut, tmp_path)
    assert "stopped after" in rehearse.table(rehearse.load(tmp_path / "em.json"))
    repo = tmp_path / "em" / "repo"
    outs = dict(rehearse.stage_order(repo, dict(os.environ)))
    for stage in rest:
        for o in outs[stage]:
            shutil.rmtree(repo / o) if (repo / o).is_dir() else (repo / o).unlink(missing_ok=True)
    again = rehearse.rehearse("em", tmp_path, resume=True)
    by = {s.stage: s for s in again.stages}
    assert set(by) == set(names) and again.complete
    assert by[f"evaluate@deeplab-{seed}"].seconds is None and by[f"evaluate@deeplab-{seed}"].output_mb > 0
    assert by[f"interpret@deeplab-{seed}"] == next(s for s in back.stages if s.stage == f"interpret@deeplab-{seed}")
    assert all(by[s].seconds > 0 and by[s].output_mb > 0 for s in rest)
    assert "1 stage before a resume not measured" in rehearse.table(again)
    assert rehearse.load(tmp_path / "em.json") == again
    assert "unmeasured" in rehearse.overview([again])


def test_the_readme_tables_are_replaced_between_their_markers_only(tmp_path):
    run = rehearse.StageRun("train@deeplab-1", 10.0, 2048, 2048, None, 5.0, "a/train.pt", 4.0, 2, "step", "train 5.0 s/step")
    r = rehearse.Rehearsal("pascal", "CPU", (375, 500), 8, 2, [run], complete=True)
    start, end = rehearse.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{start}\nold table\n{end}\nafter\n")
    rehearse.fill_readme(readme, [r])
    text = readme.read_text()
    assert text.startswith(f"before\n{start}\n| stage | pascal (375×500) |") and text.endswith(f"</details>\n{end}\nafter\n")
    assert "old table" not in text and "| train deeplab | train 5.0 s/step, 2.0 GB, 5 MB |" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="expected one"):
        rehearse.fill_readme(readme, [r])
    assert readme.read_text() == "no markers\n" and list(tmp_path.iterdir()) == [readme]
