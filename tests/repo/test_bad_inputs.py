"""Bad input, table-driven: each case gets one clear message naming the file or the params key (and how to
fix it), and every output written before is byte-identical afterwards.

A module-scoped workspace holds what a user has after a good run: a prepared folder dataset, a trained and
projected model and their checkpoints. Each case then does something wrong to a copy of the inputs and runs
the real entry point (config loading, data preparation, a stage); the whole workspace is hashed before and
after."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scaleprotoseg.config import data_source, load_config, set_key
from scaleprotoseg.errors import ArtifactError, ConfigError, DataError, DivergenceError
from scaleprotoseg.models.checkpoint import load_checkpoint, save_checkpoint
from scaleprotoseg.stages.evaluate import evaluate_stage
from scaleprotoseg.stages.prepare import prepare_dataset
from scaleprotoseg.stages.project import project
from scaleprotoseg.stages.train import train

from ..conftest import TINY_OVERRIDES
from ..layouts import write_folder

DEEPLAB = {**TINY_OVERRIDES, "presets.embedded.deeplab.steps": 4, "presets.embedded.deeplab.batch_size": 2}
PROTO = {**DEEPLAB, "presets.embedded.scaleprotoseg.warmup_steps": 1, "presets.embedded.scaleprotoseg.joint_steps": 1,
         "presets.embedded.scaleprotoseg.batch_size": 2, "presets.embedded.scaleprotoseg.features": 8,
         "presets.embedded.project_scaleprotoseg.finetune_steps": 1}


def digest(root: Path) -> dict[str, str]:
    """Every file under `root` (temporaries included) → its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """raw/ (a folder dataset), out/prepared, out/train/deeplab, out/train/scaleprotoseg, out/project/…"""
    from scaleprotoseg.config import read_params
    from scaleprotoseg.paths import repo_root

    base = tmp_path_factory.mktemp("bad")
    params = read_params(repo_root() / "params.yaml")
    write_folder(base / "raw")
    set_key(params, "data_sources.folder.root", str(base / "raw"))
    out = base / "out"
    prepare_dataset(params, "folder", out / "prepared")
    cfg = load_config(params, dataset="embedded", overrides=DEEPLAB)
    data = out / "prepared"
    train(cfg, data, out / "train" / "deeplab", out / "reports" / "deeplab", progress=False)
    pcfg = load_config(params, dataset="embedded", method="scaleprotoseg", overrides=PROTO)
    train(pcfg, data, out / "train" / "scaleprotoseg", out / "reports" / "scaleprotoseg", progress=False)
    project(pcfg, data, out / "train" / "scaleprotoseg", out / "project" / "scaleprotoseg", progress=False)
    return {"base": base, "params": params, "out": out, "data": data}


def fresh_raw(ws, tmp_path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(ws["base"] / "raw", raw)
    return raw


def prepare_from(ws, raw, **source):
    params = json.loads(json.dumps(ws["params"]))
    set_key(params, "data_sources.folder.root", str(raw))
    for k, v in source.items():
        set_key(params, f"data_sources.folder.{k}", v)
    return prepare_dataset(params, "folder", ws["out"] / "prepared")


def run_config(overrides, method="deeplab"):
    def act(ws, tmp_path):
        cfg = load_config(ws["params"], dataset="embedded", method=method, overrides={**DEEPLAB, **PROTO, **overrides})
        train(cfg, ws["data"], ws["out"] / "train" / method, ws["out"] / "reports" / method, progress=False)
    return act


# ---- data: each writes into a copy of the raw folder, then prepares over the existing prepared data -------

def unknown_mask_values(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    lab = np.asarray(Image.open(raw / "masks" / "f3.png")).copy()
    lab[5:8, 5:8] = 77
    Image.fromarray(lab).save(raw / "masks" / "f3.png")
    prepare_from(ws, raw)


def split_id_without_files(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "splits").mkdir()
    (raw / "splits" / "train.txt").write_text("f0\nf1\nghost\n")
    (raw / "splits" / "val.txt").write_text("f2\n")
    prepare_from(ws, raw)


def empty_split(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "splits").mkdir()
    (raw / "splits" / "train.txt").write_text("f0\nf1\n")
    (raw / "splits" / "val.txt").write_text("\n")
    prepare_from(ws, raw)


def empty_images_folder(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    for f in [*(raw / "images").iterdir(), *(raw / "masks").iterdir()]:
        f.unlink()
    prepare_from(ws, raw)


def malformed_classes_json(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "classes.json").write_text('{"names": ["ground", "box",\n  "stripe"], "values": [10, 20, 30,]}')
    prepare_from(ws, raw)


def classes_json_without_names(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "classes.json").write_text(json.dumps({"labels": ["a", "b"]}))
    prepare_from(ws, raw)


def names_and_values_differ(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "classes.json").write_text(json.dumps({"names": ["a", "b"], "values": [10, 20, 30]}))
    prepare_from(ws, raw)


def decompression_bomb(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(raw / "images" / "f1.png")
    try:
        prepare_from(ws, raw, max_image_pixels=2000)  # 4,800 pixels > the limit; the other images (1,920) pass
    finally:
        Image.MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default, for the other tests


def image_without_mask(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "masks" / "f4.png").unlink()
    prepare_from(ws, raw)


def mask_of_another_size(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    Image.fromarray(np.full((20, 20), 10, np.uint8)).save(raw / "masks" / "f5.png")
    prepare_from(ws, raw)


def corrupt_image(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    (raw / "images" / "f6.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    prepare_from(ws, raw)


def rgb_mask(ws, tmp_path):
    raw = fresh_raw(ws, tmp_path)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(raw / "masks" / "f2.png")
    prepare_from(ws, raw)


def bad_max_image_pixels(ws, tmp_path):
    params = json.loads(json.dumps(ws["params"]))
    set_key(params, "data_sources.folder.max_image_pixels", -5)
    data_source(params, "folder")


def missing_raw_folder(ws, tmp_path):
    prepare_from(ws, tmp_path / "nowhere")


# ---- checkpoints and stages -------------------------------------------------------------------------------

def evaluate_with_another_methods_checkpoint(ws, tmp_path):
    cfg = load_config(ws["params"], dataset="embedded", method="protoseg", overrides=PROTO)
    evaluate_stage(cfg, ws["data"], ws["out"] / "project" / "scaleprotoseg", ws["out"] / "project" / "none",
                   tmp_path / "report", progress=False)


def project_with_other_classes(ws, tmp_path):
    other = tmp_path / "prepared"
    shutil.copytree(ws["data"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["classes"] = ["a", "b", "c", "d"]
    (other / "meta.json").write_text(json.dumps(meta))
    cfg = load_config(ws["params"], dataset="embedded", method="scaleprotoseg", overrides=PROTO)
    project(cfg, other, ws["out"] / "train" / "scaleprotoseg", ws["out"] / "project" / "scaleprotoseg", progress=False)


def project_without_training(ws, tmp_path):
    cfg = load_config(ws["params"], dataset="embedded", method="scaleprotoseg", overrides=PROTO)
    project(cfg, ws["data"], tmp_path / "never_trained", ws["out"] / "project" / "scaleprotoseg", progress=False)


def corrupt_checkpoint_to_evaluate(ws, tmp_path):
    bad = tmp_path / "train"
    bad.mkdir()
    (bad / "model.pt").write_bytes(b"PK\x03\x04 truncated")
    cfg = load_config(ws["params"], dataset="embedded", overrides=DEEPLAB)
    evaluate_stage(cfg, ws["data"], bad, tmp_path / "none", tmp_path / "report", progress=False)


def diverging_learning_rate(ws, tmp_path):
    # 1e30 is finite and positive (the config accepts it): the loss becomes inf/NaN within a few steps
    run_config({"presets.embedded.deeplab.lr": 1.0e30})(ws, tmp_path)


def non_finite_weights_are_not_saved(ws, tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    save_checkpoint(ws["out"] / "train" / "deeplab" / "model.pt", model, {}, phase="train", step=1)


def disk_full_while_writing_a_checkpoint(ws, tmp_path, monkeypatch=None):
    import scaleprotoseg.models.checkpoint as ck

    real = torch.save

    def full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    ck.torch.save = full
    try:
        model = torch.nn.Linear(2, 2)
        save_checkpoint(ws["out"] / "train" / "deeplab" / "model.pt", model, {}, phase="train", step=1)
    finally:
        ck.torch.save = real


CASES = [
    # (id, action, error type, the message must match)
    ("accumulation-over-steps", run_config({"presets.embedded.deeplab.accumulation": 8}), ConfigError,
     r"presets\.embedded\.deeplab\.steps \(4\) is smaller than presets\.embedded\.deeplab\.accumulation \(8\)"),
    ("warmup-under-accumulation", run_config({"presets.embedded.scaleprotoseg.accumulation": 2}, "scaleprotoseg"), ConfigError,
     r"presets\.embedded\.scaleprotoseg\.warmup_steps \(1\).*accumulation"),
    ("finetune-under-accumulation", run_config({
                                                "presets.embedded.scaleprotoseg.warmup_steps": 2,
                                                "presets.embedded.scaleprotoseg.joint_steps": 2,
                                                "presets.embedded.scaleprotoseg.accumulation": 2}, "scaleprotoseg"),
     ConfigError, r"project_scaleprotoseg\.finetune_steps \(1\)"),
    ("lr-inf", run_config({"presets.embedded.deeplab.lr": float("inf")}), ConfigError, r"deeplab\.lr must be a finite"),
    ("lr-nan", run_config({"presets.embedded.deeplab.lr": float("nan")}), ConfigError, r"deeplab\.lr must be a finite"),
    ("lr-negative", run_config({"presets.embedded.deeplab.lr": -1.0}), ConfigError, r"deeplab\.lr must be a finite number > 0"),
    ("lr-as-text", run_config({"presets.embedded.deeplab.lr": "1e-5"}), ConfigError, r"deeplab\.lr.*1\.0e-5"),
    ("n-examples-zero", run_config({"presets.embedded.eval.n_examples": 0}), ConfigError, r"eval\.n_examples must be"),
    ("precision-unknown", run_config({"experiment.precision": "fp8"}), ConfigError, r"experiment\.precision is 'fp8'"),
    ("gpus-zero", run_config({"experiment.gpus": 0}), ConfigError, r"experiment\.gpus must be at least 1"),
    ("batch-not-divisible", run_config({"experiment.gpus": 3}), ConfigError,
     r"presets\.embedded\.deeplab\.batch_size \(2\).*divisible by 3"),
    ("rdzv-without-port", run_config({"experiment.rdzv_endpoint": "node0"}), ConfigError, r"experiment\.rdzv_endpoint"),
    ("optimizer-unknown", run_config({"presets.embedded.deeplab.optimizer": "rmsprop"}), ConfigError,
     r"deeplab\.optimizer is 'rmsprop'"),
    ("crop-too-large", run_config({"presets.embedded.data.crop": 4096}), ConfigError, r"data\.crop \(4096\)"),
    ("log-every-zero", run_config({"presets.embedded.runtime.log_every": 0}), ConfigError, r"runtime\.log_every"),
    ("projection-rule", run_config({"presets.embedded.project_scaleprotoseg.rule": "closest"}, "scaleprotoseg"),
     ConfigError, r"project_scaleprotoseg\.rule is 'closest'"),
    ("group-threshold", run_config({"presets.embedded.project_scaleprotoseg_groups.threshold": 1.5}, "scaleprotoseg_groups"),
     ConfigError, r"project_scaleprotoseg_groups\.threshold"),
    ("unknown-method-key", run_config({"presets.embedded.deeplab.lr_trunk": 0.1}), ConfigError, r"lr_trunk"),
    ("max-image-pixels", bad_max_image_pixels, ConfigError, r"data_sources\.folder\.max_image_pixels"),
    ("unknown-mask-values", unknown_mask_values, DataError, r"f3\.png.*mask values \[77\].*classes\.json"),
    ("split-id-without-files", split_id_without_files, DataError, r"splits/train\.txt.*ghost"),
    ("empty-split", empty_split, DataError, r"splits/val\.txt lists no image"),
    ("no-images", empty_images_folder, DataError, r"images: no images"),
    ("malformed-classes-json", malformed_classes_json, DataError, r"classes\.json: line 2, column \d+"),
    ("classes-without-names", classes_json_without_names, DataError, r"classes\.json: expected .*`names`"),
    ("names-values-differ", names_and_values_differ, DataError, r"`values` must list one mask value per name \(2 names\), got \[10, 20, 30\]"),
    ("decompression-bomb", decompression_bomb, DataError, r"f1\.png is larger than the decompression limit.*max_image_pixels"),
    ("image-without-mask", image_without_mask, DataError, r"f4"),
    ("mask-size", mask_of_another_size, DataError, r"f5\.png: label \(20, 20\)"),
    ("corrupt-image", corrupt_image, DataError, r"f6\.png"),
    ("rgb-mask", rgb_mask, DataError, r"f2\.png: a label map must be single-channel"),
    ("missing-raw-folder", missing_raw_folder, ConfigError, r"data_sources\.folder\.root.*does not exist"),
    ("checkpoint-of-another-method", evaluate_with_another_methods_checkpoint, ArtifactError,
     r"model\.pt does not belong here: it holds method 'scaleprotoseg' \(expected 'protoseg'\)"),
    ("checkpoint-of-other-classes", project_with_other_classes, ArtifactError, r"model\.pt does not belong here.*3 classes"),
    ("project-before-training", project_without_training, ArtifactError, r"never_trained/model\.pt not found"),
    ("corrupt-checkpoint", corrupt_checkpoint_to_evaluate, ArtifactError, r"model\.pt is not a readable checkpoint"),
    ("diverging-lr", diverging_learning_rate, DivergenceError,
     r"\[train\] training diverged.*presets\.embedded\.deeplab\.lr"),
    ("non-finite-weights", non_finite_weights_are_not_saved, DivergenceError, r"not writing .*model\.pt.*weight"),
    ("disk-full", disk_full_while_writing_a_checkpoint, ArtifactError, r"could not write .*model\.pt.*disk full"),
]


@pytest.mark.parametrize("name,act,error,match", CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow  # the workspace trains and projects a model
def test_bad_input_is_named_and_loses_nothing(ws, tmp_path, name, act, error, match):
    before = digest(ws["out"])
    with pytest.raises(error, match=match):
        act(ws, tmp_path)
    after = digest(ws["out"])
    assert after == before, f"{name}: outputs changed: {sorted(set(after.items()) ^ set(before.items()))[:6]}"


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.slow  # trains
def test_a_corrupt_resume_state_is_ignored_with_its_name(ws, tmp_path, capsys, params):
    cfg = load_config(params, dataset="embedded", overrides=DEEPLAB)
    out = tmp_path / "train"
    out.mkdir()
    (out / "resume_train.pt").write_bytes(b"\x80\x04 not a pickle")
    train(cfg, ws["data"], out, tmp_path / "rep", progress=False)
    said = capsys.readouterr().out
    assert f"ignoring {out / 'resume_train.pt'}: it is not a readable resume state" in said
    assert load_checkpoint(out / "model.pt")["step"] == 4 and not (out / "resume_train.pt").exists()


@pytest.mark.slow  # trains
def test_a_corrupt_finished_phase_is_recomputed(ws, tmp_path, capsys, params):
    cfg = load_config(params, dataset="embedded", method="scaleprotoseg", overrides=PROTO)
    out = tmp_path / "train"
    shutil.copytree(ws["out"] / "train" / "scaleprotoseg", out)
    (out / "warmup.pt").write_bytes(b"garbage")
    train(cfg, ws["data"], out, tmp_path / "rep", progress=False)
    said = capsys.readouterr().out
    assert f"[warmup] discarding {out / 'warmup.pt'}" in said and "The phase runs again" in said
    a = load_checkpoint(out / "model.pt")["state_dict"]
    b = load_checkpoint(ws["out"] / "train" / "scaleprotoseg" / "model.pt")["state_dict"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_a_killed_write_leaves_no_temporary_behind(tmp_path):
    """A temporary of the same target left by a killed writer is removed by the next write of that target."""
    from scaleprotoseg.atomic import write_json

    target = tmp_path / "out" / "metrics.json"
    target.parent.mkdir()
    (target.parent / ".metrics.json.abc123.tmp").write_text("half")
    (target.parent / ".other.json.abc123.tmp").write_text("another target's")
    write_json(target, {"a": 1})
    assert sorted(p.name for p in target.parent.iterdir()) == [".other.json.abc123.tmp", "metrics.json"]
