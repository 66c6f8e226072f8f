"""Building a method's network from its configuration (the `model` section of a preset)."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .backbone import build_backbone, freeze_batchnorm
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
