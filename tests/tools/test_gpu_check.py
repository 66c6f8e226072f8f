"""`make gpu-check` runs on a bare GPU machine (PyTorch, NumPy and the source only): its CPU smoke run passes
with every other package blocked, its copies of the Pascal preset equal params.yaml, and the bench's
labels have realistic class counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from scaleprotoseg.config import load_config, read_params
from scaleprotoseg.losses import present_classes
from scaleprotoseg.paths import repo_root
from scaleprotoseg.tools import bench, gpu_check

BLOCKED = ("tqdm", "PIL", "yaml", "pandas", "matplotlib", "dvc", "dvclive", "papermill")
# None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec("x") is None, exactly
# as for a package that is not installed (PyTorch probes optional packages with find_spec)
RUN_BLOCKED = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))
sys.argv = ["gpu_check"] + sys.argv[1:]
runpy.run_module("scaleprotoseg.tools.gpu_check", run_name="__main__")
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.slow  # python -c
def test_cpu_smoke_runs_with_only_torch_and_numpy(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(repo_root() / "src")}
    proc = subprocess.run([sys.executable, "-c", RUN_BLOCKED, "--cpu-smoke", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    table = proc.stdout[proc.stdout.index("# gpu_check:"):]
    for method in gpu_check.PHASE:
        assert any(line.startswith(f"train {method} ") and " OK " in line for line in table.splitlines()), table
    assert any(line.startswith("torchrun gloo ×1") and " OK " in line for line in table.splitlines()), table
    report = json.loads(out.read_text())
    rows = {r["part"]: r for r in report["rows"]}
    assert all(r["status"] == "OK" for r in report["rows"]), report["rows"]
    assert rows["train scaleprotoseg"]["images_s"] > 0 and rows["train deeplab"]["trunk_tflop_s"] > 0
    assert {r["precision"] for r in report["rows"] if r["part"].startswith("bench pascal")} == {"bf16", "fp32"}
    assert rows["bench ade20k: scaleprotoseg_groups"]["note"].startswith("÷ deeplab_frozen_trunk")


def test_the_pascal_copies_equal_params_yaml():
    params = read_params(repo_root() / "params.yaml")
    for method in gpu_check.PHASE:
        cfg = load_config(params, dataset="pascal", method=method)
        assert cfg.train == gpu_check.PASCAL_TRAIN[method], method
        assert replace(cfg.model, pretrained=False) == gpu_check.PASCAL_MODEL
        assert cfg.data.crop == gpu_check.PASCAL_CROP
    for name, head in bench.HEADS.items():
        cfg = load_config(params, dataset=name, method="protoseg")
        scale = load_config(params, dataset=name, method="scaleprotoseg")
        assert (cfg.train.prototypes, scale.train.prototypes, cfg.train.features, scale.train.features) == (
            head.protoseg_per_class, head.scaleprotoseg_per_scale, head.features, head.features), name
        assert (tuple(cfg.model.msc_scales), cfg.data.crop) == (head.msc, head.crop), name


# The bench's own settings (a step or two, its learning rates, tiny batches) are not the presets'; what it
# copies of the method — loss weights, weight decay, poly power, groups, projection rule and pruning — is.
METHOD_KEYS = {"PROTO": ("features", "weight_decay", "poly_power", "loss_ce", "loss_kld", "loss_l1"),
               "GROUP": ("groups", "poly_power", "loss_ce", "loss_l1", "loss_entropy"),
               "FINETUNE": ("rule", "prune_k", "prune_threshold")}


@pytest.mark.parametrize("dataset", ["pascal", "embedded"])
def test_the_bench_method_settings_equal_params_yaml(dataset):
    params = read_params(repo_root() / "params.yaml")
    proto = load_config(params, dataset=dataset, method="scaleprotoseg")
    group = load_config(params, dataset=dataset, method="scaleprotoseg_groups").train
    assert {k: getattr(proto.train, k) for k in METHOD_KEYS["PROTO"]} == {k: bench.PROTO[k] for k in METHOD_KEYS["PROTO"]}
    assert {k: getattr(group, k) for k in METHOD_KEYS["GROUP"]} == {k: bench.GROUP[k] for k in METHOD_KEYS["GROUP"]}
    assert {k: getattr(proto.project, k) for k in METHOD_KEYS["FINETUNE"]} == {
        k: getattr(bench.FINETUNE, k) for k in METHOD_KEYS["FINETUNE"]}
    assert bench.model_config("resnet101", 64).aspp_rates == tuple(load_config(params, dataset="pascal").model.aspp_rates)


@pytest.mark.parametrize("name", sorted(bench.HEADS))
def test_bench_labels_show_a_realistic_number_of_classes_per_crop(name):
    head = bench.HEADS[name]
    y = bench.crop_labels(16, 97, head.classes, head.classes_per_crop, head.background, seed=3)
    assert y.dtype == torch.uint8 and torch.equal(y, bench.crop_labels(16, 97, head.classes, head.classes_per_crop,
                                                                        head.background, seed=3))
    counts = (present_classes(y, head.classes) >= 0).sum(1)
    lo, hi = head.classes_per_crop
    assert counts.min() >= lo and counts.max() <= hi and counts.float().std() > 0
    void = (y == 255).float().mean()
    assert 0.01 < void < 0.3
    if head.background is not None:
        assert ((y == head.background).flatten(1).any(1)).all()


def test_the_table_reports_failures_without_losing_the_other_rows():
    def boom():
        raise RuntimeError("out of memory")

    rows = gpu_check.guarded("train x", boom, 0.0, 1e9) + gpu_check.guarded("train y", lambda: {"part": "train y"}, 0.0, 1e9)
    rows += gpu_check.guarded("bench z", list, -1e9, 1.0)
    text = gpu_check.table(rows)
    assert "FAIL: RuntimeError: out of memory" in text and "train y" in text and "SKIPPED: time budget" in text
