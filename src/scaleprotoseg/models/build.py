"""Building a method's network from its configuration, and rebuilding a trained one from its checkpoint."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..config import ModelConfig, RunConfig
from ..errors import ArtifactError, ConfigError
from .backbone import build_backbone, freeze_batchnorm
from .checkpoint import load_checkpoint
from .deeplab import DeepLabV2
from .prototypes import PrototypeSegmenter


def build_model(method: str, model_cfg: ModelConfig, num_classes: int, prototypes: int = 3, features: int = 64) -> nn.Module:
    """The network of `method` from the `model` section of its preset (prototype methods: how many
    prototypes per class (ProtoSeg) or per class and scale (ScaleProtoSeg), and their dimension)."""
    backbone = build_backbone(
        model_cfg.backbone,
        pretrained=model_cfg.pretrained,
        pretrained_path=model_cfg.pretrained_path,
        width=model_cfg.width,
    )
    if model_cfg.freeze_bn:
        freeze_batchnorm(backbone)
    if method == "deeplab":
        return DeepLabV2(backbone, num_classes, model_cfg.aspp_rates, model_cfg.msc_scales, model_cfg.freeze_bn)
    if method in ("protoseg", "scaleprotoseg"):
        return PrototypeSegmenter(backbone, num_classes, model_cfg.aspp_rates, per_class=prototypes,
                                  features=features, multiscale=method == "scaleprotoseg",
                                  msc_scales=model_cfg.msc_scales, freeze_bn=model_cfg.freeze_bn)
    raise ValueError(f"no model for method {method!r}")


def build_for(cfg: RunConfig, num_classes: int, offline: bool = False) -> nn.Module:
    """The untrained network of `cfg.method` (offline: never download ImageNet weights)."""
    base = cfg.start if cfg.start is not None else cfg
    model_cfg = base.model
    if offline:
        model_cfg = type(model_cfg)(**{**model_cfg.__dict__, "pretrained": False})
    if base.method == "deeplab":
        return build_model("deeplab", model_cfg, num_classes)
    model = build_model(base.method, model_cfg, num_classes, prototypes=base.train.prototypes, features=base.train.features)
    if cfg.method == "scaleprotoseg_groups":
        model.add_groups(cfg.train.groups)
    return model


def load_model(checkpoint: str | Path, device="cpu", stage_hint: str = "the training stage",
               expect: RunConfig | None = None, classes=None):
    """Rebuild a trained model from its checkpoint alone (never downloads weights or runs code from it):
    (model in eval mode on `device`, its RunConfig, the checkpoint payload). With `expect` (and the dataset's
    `classes`), a checkpoint of another method, dataset or class list is refused, naming what differs."""
    payload = load_checkpoint(checkpoint, stage_hint)
    cfg = stored_config(payload["config"], checkpoint, stage_hint)
    if expect is not None:
        stored = {"method": cfg.method, "dataset": cfg.dataset}
        wanted = {"method": expect.method, "dataset": expect.dataset}
        if classes is not None:
            stored["classes"], wanted["classes"] = list(payload["classes"]), list(classes)
        wrong = [f"{k} {stored[k]!r} (expected {wanted[k]!r})" if k != "classes" else
                 f"{len(stored[k])} classes {stored[k][:4]}… (the prepared data has {len(wanted[k])}: {wanted[k][:4]}…)"
                 for k in stored if stored[k] != wanted[k]]
        if wrong:
            raise ArtifactError(f"{checkpoint} does not belong here: it holds {'; '.join(wrong)}. Re-run {stage_hint} "
                                "(`dvc repro`) to remake it for this configuration and data.")
    model = rebuild(cfg, len(payload["classes"]), payload["state_dict"])
    return model.to(device).eval(), cfg, payload


def stored_config(config: dict, source, stage_hint: str) -> RunConfig:
    """The RunConfig stored with a trained model (a checkpoint's or a model package's), or one clear error
    naming `source` and the stage that remakes it."""
    try:
        return RunConfig.from_dict(config)
    except (KeyError, TypeError, ConfigError) as exc:
        raise ArtifactError(f"{source}: its stored configuration does not fit this version of the code (no or wrong "
                            f"{exc}); it was made by an older version: re-run {stage_hint} to remake it.") from exc


def rebuild(cfg: RunConfig, num_classes: int, state_dict: dict) -> nn.Module:
    """The network of `cfg` with the trained weights `state_dict` (never downloads weights)."""
    model = build_for(cfg, num_classes, offline=True)
    model.load_state_dict(state_dict)
    return model
