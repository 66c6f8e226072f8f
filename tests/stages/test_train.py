"""Checkpoint round trip, resume after an interruption, and the DeepLab training stage end to end."""

import json

import pytest
import torch

from scaleprotoseg.artifacts import provenance, read_curves
from scaleprotoseg.config import RunConfig, load_config
from scaleprotoseg.errors import ArtifactError
from scaleprotoseg.models.build import build_model, load_model
from scaleprotoseg.models.checkpoint import load_checkpoint, save_checkpoint
from scaleprotoseg.stages.evaluate import evaluate_stage
from scaleprotoseg.stages.project import project
from scaleprotoseg.stages.train import train


def test_checkpoint_round_trip_is_data_only(tmp_path, tiny_cfg):
    model = build_model("deeplab", tiny_cfg.model, 3)
    path = save_checkpoint(tmp_path / "m.pt", model, tiny_cfg.to_dict(), phase="train", step=7, classes=["a", "b", "c"])
    raw = torch.load(path, weights_only=True)  # loading never executes code from the file
    assert raw["step"] == 7 and raw["phase"] == "train"
    payload = load_checkpoint(path)
    clone = build_model("deeplab", tiny_cfg.model, 3)
    clone.load_state_dict(payload["state_dict"])
    for (k, a), (_, b) in zip(model.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(a, b), k
    assert RunConfig.from_dict(payload["config"]) == tiny_cfg
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_missing_checkpoint_names_the_stage(tmp_path):
    with pytest.raises(ArtifactError, match="run the training stage first"):
        load_checkpoint(tmp_path / "absent.pt", stage_hint="the training stage")


def _final_state(path):
    return load_checkpoint(path)["state_dict"]


@pytest.mark.slow  # trains
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, tiny_dataset, tiny_cfg, capsys):
    reference = tmp_path / "ref"
    train(tiny_cfg, tiny_dataset, reference, tmp_path / "ref_reports", progress=False)

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg, tiny_dataset, run, tmp_path / "run_reports", progress=False, interrupt_at=5)
    assert (run / "resume_train.pt").is_file() and not (run / "model.pt").exists()
    assert torch.load(run / "resume_train.pt", weights_only=True)["step"] == 4  # checkpoint_every = 2

    summary = train(tiny_cfg, tiny_dataset, run, tmp_path / "run_reports", progress=False)
    assert summary["phases"][0]["resumed"] == 4 and "resuming from step 4" in capsys.readouterr().out
    assert not (run / "resume_train.pt").exists()
    ref, res = _final_state(reference / "model.pt"), _final_state(run / "model.pt")
    for k in ref:
        assert torch.allclose(ref[k].float(), res[k].float(), atol=1e-6), k
    # The curves: every step once (steps 1-4 from the resume state; step 5, logged before the kill, not twice)
    want, got = read_curves(tmp_path / "ref_reports" / "dvclive"), read_curves(tmp_path / "run_reports" / "dvclive")
    assert got["train/loss"]["step"].tolist() == want["train/loss"]["step"].tolist() == list(range(1, 7))
    assert got["train/loss"].iloc[:, -1].tolist() == pytest.approx(want["train/loss"].iloc[:, -1].tolist(), rel=1e-5)


@pytest.mark.slow  # trains
def test_resume_state_of_another_config_is_ignored(tmp_path, tiny_dataset, tiny_cfg, params):
    from ..conftest import TINY_OVERRIDES

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg, tiny_dataset, run, tmp_path / "r", progress=False, interrupt_at=3)
    other = load_config(params, overrides={**TINY_OVERRIDES, "presets.embedded.deeplab.lr": 0.01})
    summary = train(other, tiny_dataset, run, tmp_path / "r", progress=False)
    assert summary["phases"][0]["resumed"] == 0


@pytest.mark.slow  # trains and evaluates
def test_train_evaluate_and_curves(tmp_path, tiny_dataset, tiny_cfg):
    train(tiny_cfg, tiny_dataset, tmp_path / "train", tmp_path / "rep", progress=False)
    curves = read_curves(tmp_path / "rep" / "dvclive")
    assert "train/loss" in curves and len(curves["train/loss"]) == tiny_cfg.train.steps
    assert "val/miou" in curves
    project(tiny_cfg, tiny_dataset, tmp_path / "train", tmp_path / "proj")
    out = evaluate_stage(tiny_cfg, tiny_dataset, tmp_path / "train", tmp_path / "proj", tmp_path / "eval", progress=False)
    m = out["metrics"]
    assert m["images"] == 3 and 0 <= m["miou"] <= 100
    for f in ("metrics.json", "dvclive/params.yaml", "dvclive/plots/custom/per_class_iou.json",
              "per_class_iou.csv", "confusion.png", "predictions.png"):
        assert (tmp_path / "eval" / f).is_file()
    bars = json.loads((tmp_path / "eval" / "dvclive/plots/custom/per_class_iou.json").read_text())
    assert {r["class"]: r["IoU %"] for r in bars} == {c: round(v, 4) for c, v in m["iou"].items() if v is not None}


PROTO_TINY = {
    "presets.embedded.data.crop": 32,
    "presets.embedded.model.width": 4,
    "experiment.device": "cpu",
    "presets.embedded.project_scaleprotoseg.finetune_steps": 2,
    **{f"presets.embedded.runtime.{k}": v for k, v in {
        "log_every": 1, "checkpoint_every": 2, "val_every": 0, "val_images": 2}.items()},
    **{f"presets.embedded.scaleprotoseg.{k}": v for k, v in {
        "features": 4, "batch_size": 2, "warmup_steps": 2, "joint_steps": 4}.items()},
    **{f"presets.embedded.scaleprotoseg_groups.{k}": v for k, v in {
        "batch_size": 2, "warmup_steps": 2, "joint_steps": 2}.items()},
}


@pytest.mark.slow  # trains
def test_prototype_training_resumes_across_phases(tmp_path, tiny_dataset, params, capsys):
    cfg = load_config(params, method="scaleprotoseg", overrides=PROTO_TINY)
    train(cfg, tiny_dataset, tmp_path / "ref", tmp_path / "ref_rep", progress=False)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # interrupted in the joint phase (global step 4 = joint step 2)
        train(cfg, tiny_dataset, run, tmp_path / "run_rep", progress=False, interrupt_at=4)
    assert (run / "warmup.pt").is_file() and not (run / "joint.pt").exists()
    train(cfg, tiny_dataset, run, tmp_path / "run_rep2", progress=False)
    out = capsys.readouterr().out
    assert "[warmup] already finished" in out and "[joint] resuming from step 2" in out
    ref, got = _final_state(tmp_path / "ref" / "model.pt"), _final_state(run / "model.pt")
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), atol=1e-6), k
    # the skipped warm-up's curve is replayed into the new run's logs
    curves = read_curves(tmp_path / "run_rep2" / "dvclive")
    assert len(curves["warmup/loss"]) == 2


@pytest.mark.slow  # trains
def test_finished_phases_are_reused_across_runtime_changes_and_discarded_with_the_reason(tmp_path, tiny_dataset,
                                                                                          params, capsys):
    cfg = load_config(params, method="scaleprotoseg", overrides=PROTO_TINY)
    train(cfg, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    capsys.readouterr()
    # a run-time knob is no part of what a phase computed: both phases are reused
    quiet = load_config(params, method="scaleprotoseg", overrides={**PROTO_TINY, "presets.embedded.runtime.log_every": 3,
                                                                   "presets.embedded.runtime.checkpoint_every": 4})
    train(quiet, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    out = capsys.readouterr().out
    assert "[warmup] already finished" in out and "[joint] already finished" in out and "discarding" not in out
    # a training setting is: the phases run again, and the log says which section changed
    other = load_config(params, method="scaleprotoseg", overrides={**PROTO_TINY, "presets.embedded.scaleprotoseg.loss_kld": 0.5})
    train(other, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    out = capsys.readouterr().out
    assert "[warmup] discarding" in out and "other `train` than this run has" in out and "already finished" not in out


@pytest.mark.slow  # trains
def test_prototype_chain_projection_groups_and_threshold(tmp_path, tiny_dataset, params):
    cfg = load_config(params, method="scaleprotoseg", overrides=PROTO_TINY)
    train(cfg, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    info = project(cfg, tiny_dataset, tmp_path / "t", tmp_path / "p", progress=False)
    model, _, _ = load_model(tmp_path / "p" / "model.pt")
    assert model.prototypes.num_prototypes == info["prototypes"] == info["prototypes_before"] - info["duplicates_removed"]
    assert len(provenance(tmp_path / "p")) == info["prototypes_before"]
    gcfg = load_config(params, method="scaleprotoseg_groups", overrides=PROTO_TINY)
    train(gcfg, tiny_dataset, tmp_path / "gt", tmp_path / "gr", progress=False, start_checkpoint=tmp_path / "p" / "model.pt")
    ginfo = project(gcfg, tiny_dataset, tmp_path / "gt", tmp_path / "gp", progress=False)
    grouped, _, _ = load_model(tmp_path / "gp" / "model.pt")
    w = grouped.group_head.weight[grouped.group_head.valid_weights()]
    assert ((w == 0) | (w >= gcfg.project.threshold)).all()
    assert ginfo["prototypes_used"] <= ginfo["prototypes"]
    assert grouped.group_head.num_prototypes == grouped.prototypes.num_prototypes == model.prototypes.num_prototypes
    # the stage-1 parts of the grouped model are exactly the projected scaleprotoseg model's
    assert torch.equal(grouped.prototypes.vectors, model.prototypes.vectors)
    # a group run against a different scaleprotoseg configuration is refused
    other = load_config(params, method="scaleprotoseg_groups",
                                 overrides={**PROTO_TINY, "presets.embedded.scaleprotoseg.loss_kld": 0.5})
    with pytest.raises(ArtifactError, match="project@scaleprotoseg"):
        train(other, tiny_dataset, tmp_path / "gt2", tmp_path / "gr2", progress=False, start_checkpoint=tmp_path / "p" / "model.pt")


@pytest.mark.slow  # trains
def test_a_checkpoint_from_an_older_config_layout_names_the_file_and_the_fix(tmp_path, tiny_dataset, tiny_cfg):
    train(tiny_cfg, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    payload = load_checkpoint(tmp_path / "t" / "model.pt")
    old = {k: v for k, v in payload["config"].items() if k not in ("project", "runtime")}  # the layout before them
    save_checkpoint(tmp_path / "old.pt", build_model("deeplab", tiny_cfg.model, 3), old, phase="train", step=1,
                    classes=payload["classes"])
    with pytest.raises(ArtifactError, match=r"old.pt: its stored configuration does not fit .* re-run train@deeplab"):
        load_model(tmp_path / "old.pt", stage_hint="train@deeplab")
