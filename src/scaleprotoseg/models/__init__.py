"""Networks: backbones, ASPP heads and the segmenters built from them."""

from .aspp import ASPP
from .backbone import DeepLabResNet101, SmallDilatedResNet, build_backbone, feature_size, freeze_batchnorm
from .segmenter import DeepLabV2, build_model, multi_scale

__all__ = [
    "ASPP",
    "DeepLabResNet101",
    "DeepLabV2",
    "SmallDilatedResNet",
    "build_backbone",
    "build_model",
    "feature_size",
    "freeze_batchnorm",
    "multi_scale",
]
