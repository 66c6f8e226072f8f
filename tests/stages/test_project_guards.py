"""What the rehearsal at true sizes found in the project stage, kept at tiny size: ProtoSeg's pruning with
fewer projection images than `prune_k` is refused before any work, a pruning that would remove every
prototype is one clear error (it crashed in the prototype layer), and a relative `model.pretrained_path` is
read from the repository even when the stage's kernel runs in reports/."""

from __future__ import annotations

import os

import pytest
import torch

from scaleprotoseg.config import load_config
from scaleprotoseg.errors import ConfigError, StageError
from scaleprotoseg.models.backbone import imagenet_state_dict
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.project import check_pruning, project
from scaleprotoseg.stages.train import train

from ..trained import TINY_PROTO, prepared

PROTOSEG = {k.replace(".scaleprotoseg.", ".protoseg.").replace("project_scaleprotoseg", "project_protoseg"): v
            for k, v in TINY_PROTO.items() if "groups" not in k}


def test_pruning_needs_prune_k_images(params):
    cfg = load_config(params, method="protoseg", overrides=PROTOSEG)
    assert (cfg.project.prune, cfg.project.prune_k) == (True, 6)
    with pytest.raises(ConfigError, match=r"prune_k is 6.*'train' split has 4 image"):
        check_pruning(cfg, 4, "train")
    check_pruning(cfg, 6, "train")
    off = load_config(params, method="protoseg", overrides={**PROTOSEG, "presets.embedded.project_protoseg.prune": False})
    check_pruning(off, 1, "train")
    check_pruning(load_config(params, method="scaleprotoseg", overrides=TINY_PROTO), 1, "train")  # never prunes


@pytest.mark.slow  # trains a tiny ProtoSeg (a few seconds)
def test_a_pruning_that_removes_every_prototype_is_one_clear_error(params, tmp_path, monkeypatch):
    from scaleprotoseg import projection as pj

    data = prepared(tmp_path)
    cfg = load_config(params, method="protoseg", overrides=PROTOSEG)
    train(cfg, data, tmp_path / "t", tmp_path / "r", progress=False)
    # what an untrained model gets (the rehearsal's one update per phase): no prototype keeps its place
    real = pj.prune_mask
    monkeypatch.setattr(pj, "prune_mask", lambda d, m, t: torch.zeros_like(real(d, m, t)))
    with pytest.raises(StageError, match="would remove every prototype"):
        project(cfg, data, tmp_path / "t", tmp_path / "p", progress=False)
    assert not (tmp_path / "p" / "model.pt").exists() and not (tmp_path / "p" / "projection.json").exists()
    small = load_config(params, method="protoseg", overrides={**PROTOSEG, "presets.embedded.project_protoseg.prune_k": 7})
    with pytest.raises(ConfigError, match="prune_k is 7"):  # before the projection pass
        project(small, data, tmp_path / "t", tmp_path / "p2", progress=False)
    assert not (tmp_path / "p2").exists()


def test_relative_pretrained_path_is_read_from_the_repository(tmp_path, monkeypatch):
    root = repo_root()
    rel = f".tmp/pretrained-{os.getpid()}.pth"
    (root / ".tmp").mkdir(exist_ok=True)
    torch.save({"conv1.weight": torch.ones(1)}, root / rel)
    try:
        (root / "reports").mkdir(exist_ok=True)
        monkeypatch.chdir(root / "reports")  # where the stage kernels run (papermill --cwd reports/<dataset>)
        assert imagenet_state_dict(rel)["conv1.weight"].item() == 1.0
        with pytest.raises(ConfigError, match="does not exist"):
            imagenet_state_dict(".tmp/absent.pth")
    finally:
        (root / rel).unlink()
