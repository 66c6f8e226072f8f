"""Tiny trained models for the tests that use one (predict, packages): ScaleProtoSeg projected, and its group
stage thresholded, on the tiny prepared dataset of `conftest.tiny_samples`, with the evaluation's summary."""

from __future__ import annotations

from pathlib import Path

from scaleprotoseg.config import load_config
from scaleprotoseg.data.prepared import DatasetMeta, write_prepared
from scaleprotoseg.stages.evaluate import evaluate_stage
from scaleprotoseg.stages.project import project
from scaleprotoseg.stages.train import train

from .conftest import CLASSES, tiny_samples

TINY_PROTO = {
    "presets.embedded.data.crop": 32,
    "presets.embedded.model.width": 4,
    "experiment.device": "cpu",
    "presets.embedded.project_scaleprotoseg.finetune_steps": 1,
    "presets.embedded.eval.n_examples": 1,
    **{f"presets.embedded.runtime.{k}": v for k, v in {
        "log_every": 1, "checkpoint_every": 2, "val_every": 0, "val_images": 2}.items()},
    **{f"presets.embedded.scaleprotoseg.{k}": v for k, v in {
        "features": 4, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2}.items()},
    **{f"presets.embedded.scaleprotoseg_groups.{k}": v for k, v in {
        "batch_size": 2, "warmup_steps": 1, "joint_steps": 1}.items()},
}


def prepared(root: Path) -> Path:
    meta = DatasetMeta(name="tiny", classes=CLASSES, splits={"train": tuple(f"img{i:03d}" for i in range(6)),
                                                             "val": tuple(f"img{i:03d}" for i in range(6, 9))})
    return write_prepared(root / "prepared", meta, ((s, i, l, None) for s, i, l, _ in tiny_samples(9)))


def trained(root: Path, params, groups: bool = True) -> dict:
    """{data, cfg, train, project, evaluate} of scaleprotoseg (and of its groups: `groups_*`) under `root`."""
    data = prepared(root)
    cfg = load_config(params, method="scaleprotoseg", overrides=TINY_PROTO)
    train(cfg, data, root / "t", root / "tr", progress=False)
    project(cfg, data, root / "t", root / "p", progress=False)
    out = {"data": data, "cfg": cfg, "train": root / "t", "project": root / "p"}
    if groups:
        gcfg = load_config(params, method="scaleprotoseg_groups", overrides=TINY_PROTO)
        train(gcfg, data, root / "gt", root / "gr", progress=False, start_checkpoint=root / "p" / "model.pt")
        project(gcfg, data, root / "gt", root / "gp", progress=False)
        evaluate_stage(gcfg, data, root / "gt", root / "gp", root / "ge", progress=False)
        out.update({"groups_cfg": gcfg, "groups_train": root / "gt", "groups_project": root / "gp", "groups_evaluate": root / "ge"})
    return out
