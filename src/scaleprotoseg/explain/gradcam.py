"""Grad-CAM of the DeepLab-v2 baseline: the post-hoc saliency a reader compares prototype maps with.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a layer's output by the spatial mean of the
gradient of a class score with respect to it, sums the weighted channels and keeps the positive part. Here
the layer is the last trunk stage (`backbone.layer5`, the input of the ASPP head) and the class score of a
segmenter is the sum of the class's logits (upsampled to the input size) over the pixels DeepLab predicts as
that class, or over the whole image when it predicts none. The map is normalised to [0, 1] and upsampled
bilinearly to the input size. The computation is captum's `LayerGradCam`; Grad-CAM runs on the full-scale
input only (multi-scale inference, when configured, is not part of the explained score).

`load_gradcam_model` reads the DeepLab baseline from its checkpoint (and `read_checkpoint` any model
checkpoint of this project, with one clear error naming the file).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArtifactError
from ..models.build import load_model
from ..models.checkpoint import load_checkpoint

WHERE_MODELS = ("a prototype model is the model.pt the project stage writes (artifacts/project/<dataset>/<method>/seed-<n>/), "
                "a DeepLab model the one the train stage writes (artifacts/train/<dataset>/deeplab/seed-<n>/)")


def head_logits(model: nn.Module, feats: torch.Tensor, size) -> torch.Tensor:
    """(B, K, H, W) logits from the trunk's output `feats`, upsampled bilinearly to `size`: DeepLab's ASPP, or
    a prototype segmenter's ASPP → sigmoid → prototype head (so Grad-CAM explains either model)."""
    out = model.aspp(feats)
    if getattr(model, "prototypes", None) is not None:
        out = model.head(torch.sigmoid(out))["logits"]
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def normalise_map(cam: torch.Tensor) -> torch.Tensor:
    """Scale a non-negative map to [0, 1] by its maximum (an all-zero map stays zero)."""
    top = cam.max()
    return cam / top if float(top) > 0 else torch.zeros_like(cam)


def gradcam_maps(model: nn.Module, x: torch.Tensor, classes) -> torch.Tensor:
    """(len(classes), H, W) Grad-CAM maps in [0, 1] of `model` (a DeepLabV2, or a prototype segmenter: the
    same layer, its logits through the prototype head) for one input `x` (1, 3, H, W).

    Each class is scored over the pixels the model predicts as that class (the whole image when none). The
    layer is the last trunk stage, whose output is the ASPP head's input: the trunk runs once, and each
    class needs only the head's forward and backward (captum attributes to the head's input)."""
    with warnings.catch_warnings():  # captum imports tqdm.auto, which warns in a notebook without ipywidgets that
        warnings.filterwarnings("ignore", message="IProgress not found")  # it would draw a plain bar: no result
        from captum.attr import LayerGradCam

    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"gradcam_maps explains one image: x must be (1, 3, H, W), got {tuple(x.shape)}")
    size = tuple(x.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.backbone(x)  # (1, C, h, w): the output of backbone.layer5
            pred = head_logits(model, feats, size)[0].argmax(0)  # (H, W)
        out = []
        for c in classes:
            c = int(c)
            mask = pred == c
            if not bool(mask.any()):
                mask = torch.ones_like(mask)
            weight = mask.to(feats.dtype)

            def score(f, c=c, weight=weight):  # (B,) the class's logits summed over the mask
                return (head_logits(model, f, size)[:, c] * weight).sum((1, 2))

            with torch.enable_grad():
                a = LayerGradCam(score, model.aspp).attribute(feats, attribute_to_layer_input=True,
                                                              relu_attributions=True)  # (1, 1, h, w)
            a = normalise_map(a.detach()[0, 0].float())
            out.append(F.interpolate(a[None, None], size=size, mode="bilinear", align_corners=False)[0, 0])
        return torch.stack(out) if out else x.new_zeros((0, *size))
    finally:
        model.train(was_training)


def read_checkpoint(path: str | Path, option: str) -> dict:
    """The payload of a checkpoint of this project, or one clear error naming the file and what to give."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{option} {path}: no such checkpoint. Run the pipeline (`dvc repro`) first; {WHERE_MODELS}.")
    try:
        payload = load_checkpoint(path)
    except ArtifactError as exc:
        raise ArtifactError(f"{option} {path} is not a model checkpoint of this project "
                            f"({'unreadable as a PyTorch file' if exc.__cause__ else 'another format'}); "
                            f"{WHERE_MODELS}.") from exc
    return payload


def load_gradcam_model(path: str | Path, device, classes, option: str = "--gradcam"):
    """The DeepLab for Grad-CAM (`option` names where its path came from, for the messages), which must
    predict the same classes as the prototype model."""
    method = (read_checkpoint(path, option).get("config") or {}).get("method")
    if method != "deeplab":
        raise ArtifactError(f"{option} {path} is a {method} checkpoint; {option} takes a DeepLab one "
                            "(artifacts/train/<dataset>/deeplab/seed-<n>/model.pt).")
    model, _, payload = load_model(path, device, "the train stage")
    if list(payload["classes"]) != list(classes):
        raise ArtifactError(f"{option} {path} predicts {len(payload['classes'])} classes {list(payload['classes'])[:4]}…, "
                            f"the prototype model {len(classes)} {list(classes)[:4]}…; give the DeepLab of the same dataset.")
    return model
