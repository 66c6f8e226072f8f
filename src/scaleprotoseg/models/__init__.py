"""Networks: backbones, ASPP heads and the segmenters built from them.

`base` (MSC, BatchNorm held in eval mode, the segmenter base class) ← `deeplab`, `prototypes` ← `build`;
`checkpoint` is the data-only file a trained model is saved in and rebuilt from (`build.load_model`).
"""

from .aspp import ASPP
from .backbone import DeepLabResNet101, SmallDilatedResNet, build_backbone, feature_size, freeze_batchnorm
from .base import SegmentationModel, multi_scale
from .build import build_model
from .deeplab import DeepLabV2
from .prototypes import PrototypeSegmenter

__all__ = [
    "ASPP",
    "DeepLabResNet101",
    "DeepLabV2",
    "PrototypeSegmenter",
    "SegmentationModel",
    "SmallDilatedResNet",
    "build_backbone",
    "build_model",
    "feature_size",
    "freeze_batchnorm",
    "multi_scale",
]
