"""ScaleProtoSeg: interpretable semantic segmentation with multi-scale prototypes.

Reference implementation of ScaleProtoSeg (Porta et al., WACV 2025), its predecessor ProtoSeg and the
black-box DeepLab-v2 baseline, organised as a DVC pipeline of papermill notebooks.
"""

__version__ = "0.1.0"
