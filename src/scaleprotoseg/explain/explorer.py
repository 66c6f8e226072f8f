"""An interactive explorer of a prototype model: one self-contained HTML page (no network, no server).

`write_explorer` runs the model on the first validation images and writes a page where a click on a pixel
shows its predicted class, the decision behind it and the prototypes that made it:

- **grouped model** (ScaleProtoSeg stage 2): the winning group of the predicted class c, i.e. the arg-max
  over c's groups of group activation × own-class head weight (`maps.class_maps`), its prototypes with
  their group weights, source patches and activation maps, and every group's map;
- **prototype model** (ProtoSeg, ScaleProtoSeg stage 1): the winning prototype (the arg-max over c's
  prototypes of log-similarity × own-class last-layer weight, its contribution to the class logit) and all
  of c's prototypes with their weights, source patches and activation maps;
- the Grad-CAM map of the predicted class when `saliency` is given (e.g. of the DeepLab baseline);
- a gallery of the source patches by class and scale (unused prototypes of a grouped model greyed out).

What is stored, to keep the page small: images as PNG data URLs (downscaled for display only, to at most
`display_side` pixels; clicks use the label's pixel grid); the prediction, ground truth and winner maps at
label resolution, run-length encoded (they are piecewise constant, and decide the panel exactly as Python
does); activation maps at feature resolution (up to `MAP_SIDE` cells a side; a larger grid, such as
Cityscapes' at 1024 × 2048, is averaged over blocks of cells), quantised to uint8 per map (min/max kept), only
for the classes predicted in the image (at most `MAP_CLASSES` of them, those with the most pixels), and
upsampled by the browser's canvas.

Test hook: a URL ending in `#image=2&x=10&y=20` opens image 2 and dispatches a click on label pixel
(x=10, y=20) through the canvas's click listener (the path of a real click; pixel-exact while the image is
shown at zoom ≥ 1, i.e. up to 560 pixels a side); `&view=gallery` opens the gallery, `&overlay=win` (or
`truth`, `pred`, `none`) picks the overlay. The panel carries its
values as attributes (`data-class`, `data-group`, `data-prototype`, `data-prototypes`, …) and
`<body data-ready="1">` says the page has finished, so a headless browser's DOM can be checked.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..data.transforms import eval_transform
from ..errors import ArtifactError
from ..interpretability import similarity_maps
from ..plots import class_palette
from .maps import class_maps, class_members, class_weights, predict_from_sim, winner_map
from .page import PAGE

SALIENCY_SIDE = 64  # saliency maps are smooth: stored at most this many pixels a side
# Activation maps are stored at feature resolution up to this many cells a side, beyond it averaged over blocks of
# cells (area): Cityscapes' 128 × 256 grid at 64 × 128, so a 20-image page of a model predicting ~15 classes
# per image is ~40 MB, not ~160 MB; Pascal's and ADE20K's grids (≤ 86 a side) are stored whole.
MAP_SIDE = 128
# Activation and saliency maps are stored for at most this many predicted classes per image, those with the most
# pixels; the others keep their prediction, winner and prototype list, the panel saying their maps are not
# stored. A trained model predicts ~5–20 classes in an image; a model early in training (or the rehearsal's)
# can predict a hundred of ADE20K's 150, which made a 2-image page 24 MB (~240 MB at 20 images) and its
# Grad-CAM maps, one backward pass each, most of the interpret stage's time.
MAP_CLASSES = 16


def write_explorer(path, model, dataset, data_cfg, device, classes, names, patches=None, boxes=None,
                   saliency=None, max_images: int = 20, title: str = "Prototype explorer",
                   display_side: int = 384, saliency_label: str = "Grad-CAM (DeepLab)", scale_labels=None) -> dict:
    """Write the explorer of prototype `model` on the first `max_images` images of `dataset` (a
    `PreparedDataset`, evaluated with `data_cfg`'s eval transform) to `path`; returns {path, bytes, images}.

    `classes`: class names; `names`: one name per prototype ('<class>/s<scale>/<m>', `prototype_names`);
    `patches` (P, h, w, 3) uint8 and `boxes` (P, 4) (y0, x0, y1, x1 in patch pixels, −1 = none): the
    projection's source patches (`artifacts.read_patches`); `saliency`: saliency maps to show beside the
    prototype maps, as `saliency_label` — either a function (x, classes) → (len(classes), H, W) maps, called
    with each image's model input x (1, 3, H, W) and the classes the prototype model predicts in it (e.g.
    `lambda x, cs: gradcam.gradcam_maps(deeplab, x, cs)`), or a dict {image index: (K, H, W) array, or
    {class index: (H, W) array}} (indices past `max_images` are ignored); maps of any resolution.
    `scale_labels`: a name per scale for the gallery (default: the ASPP dilation rates, 'rate 6', …, or
    'rates 6+12+… (summed)' for ProtoSeg's single scale)."""
    _check_inputs(model, dataset, classes, names, patches, boxes, saliency, max_images)
    model.eval()
    P = model.prototypes.num_prototypes
    gh = model.group_head
    proto_class = model.prototypes.proto_class.cpu().numpy()
    used = gh.used_prototypes().cpu().numpy() if gh is not None else np.ones(P, bool)
    data = {
        "classes": list(map(str, classes)),
        "colours": ["#" + "".join(f"{round(255 * v):02x}" for v in rgb) for rgb in class_palette(len(classes))],
        "saliencyLabel": str(saliency_label),
        "mapClasses": MAP_CLASSES,
        "hasSaliency": saliency is not None,
        "scaleLabels": [str(v) for v in (scale_labels if scale_labels is not None else _scale_labels(model))],
        "grouped": gh is not None,
        "groups": gh.groups if gh is not None else 0,
        "protos": [{"name": str(names[p]), "cls": int(proto_class[p]), "scale": int(s), "used": bool(used[p])}
                   for p, s in enumerate(model.prototypes.proto_scale.tolist())],
        "patches": _patches(patches, boxes, P),
        "classHead": _class_head(model),
        "images": [],
    }
    n = min(max_images, len(dataset))
    for i in range(n):
        maps = saliency.get(i) if isinstance(saliency, dict) else saliency
        data["images"].append(_image_record(model, dataset, i, data_cfg, device, used, maps, display_side))
    try:
        payload = script_json(data)
    except ValueError as exc:
        raise ValueError("write_explorer: the model's weights hold NaN or infinite values; re-run the stage that "
                         "trained it (its checkpoint is not usable).") from exc
    text = PAGE.replace("__TITLE__", _html_escape(title)).replace("__DATA__", payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return {"path": str(path), "bytes": len(text.encode("utf-8")), "images": n}


@torch.no_grad()
def pixel_winners(model, sim: torch.Tensor, pred: np.ndarray) -> np.ndarray:
    """(H, W) int64: at every pixel, the winner within its predicted class, as the explanation figure decides
    it (`explain.class_maps` × `explain.class_weights`): the group index (grouped model) or the global
    prototype index; −1 where the class has no prototype left."""
    win = np.full(pred.shape, -1, np.int64)
    for c in np.unique(pred).tolist():
        idx, _ = class_members(model, c)
        if model.group_head is None and len(idx) == 0:
            continue
        mask = pred == c
        k = winner_map(class_maps(model, sim, c, pred.shape)[0], class_weights(model, c), mask)
        win[mask] = (k if model.group_head is not None else idx.numpy()[k])[mask]
    return win


def run_lengths(a: np.ndarray) -> list[int]:
    """Row-major run-length code [value, count, value, count, …] of an integer array."""
    flat = np.asarray(a).ravel()
    if flat.size == 0:
        return []
    starts = np.r_[0, np.flatnonzero(np.diff(flat)) + 1]
    counts = np.diff(np.r_[starts, flat.size])
    return np.stack([flat[starts], counts], 1).ravel().astype(np.int64).tolist()


def quantise(maps: torch.Tensor | np.ndarray) -> dict:
    """(n, h, w) float maps → {'data': base64 of n·h·w uint8 (each map min-max scaled to 0..255), 'lo',
    'hi': each map's range}; non-finite values count as 0."""
    m = torch.as_tensor(maps).detach().double().cpu().numpy()
    m = np.where(np.isfinite(m), m, 0.0)  # a NaN in a saliency map must not break the page's JSON
    lo, hi = m.min(axis=(1, 2)), m.max(axis=(1, 2))
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.round((m - lo[:, None, None]) / span[:, None, None] * 255).astype(np.uint8)
    return {"data": base64.b64encode(q.tobytes()).decode("ascii"), "lo": lo.tolist(), "hi": hi.tolist()}


def _png(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _display_image(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    s = side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))


@torch.no_grad()
def _image_record(model, dataset, i, data_cfg, device, used, saliency, display_side) -> dict:
    image, label = dataset.sample(i)
    x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)
    x = x[None].to(device)
    sim = similarity_maps(model, x)  # (P, h, w)
    size = label.shape
    pred = predict_from_sim(model, sim, size)
    win = pixel_winners(model, sim, pred)
    gh = model.group_head
    proto_class = model.prototypes.proto_class.cpu().numpy()
    groups = gh.group_activations(sim[None])[0] if gh is not None else None  # (K·G, h, w)
    sim, groups = _stored(sim), _stored(groups)  # what the page shows: at most MAP_SIDE cells a side
    per_class = {}
    counts = np.bincount(pred.ravel(), minlength=model.num_classes)
    present = np.flatnonzero(counts).tolist()
    mapped = set(sorted(present, key=lambda c: (-counts[c], c))[:MAP_CLASSES])  # the most pixels first
    for c in present:
        protos = np.flatnonzero((proto_class == c) & used)
        entry = {"protos": protos.tolist(), "maps": c in mapped}
        if c in mapped and len(protos):
            entry.update(quantise(sim[torch.as_tensor(protos, device=sim.device)]))
        if c in mapped and gh is not None:
            G = gh.groups
            entry["groupMaps"] = quantise(groups[c * G:(c + 1) * G])
        per_class[str(c)] = entry
    record = {
        "id": str(dataset.ids[i]), "H": int(size[0]), "W": int(size[1]),
        "fh": int(sim.shape[1]), "fw": int(sim.shape[2]),
        "png": _png(_display_image(image, display_side)),
        "pred": run_lengths(pred), "truth": run_lengths(label), "win": run_lengths(win), "perClass": per_class,
    }
    wanted = sorted(mapped)
    if callable(saliency):
        with torch.enable_grad():  # Grad-CAM needs gradients (this function runs under no_grad)
            maps = saliency(x, wanted)
        saliency = dict(zip(wanted, torch.as_tensor(maps).detach().cpu().numpy()))
    if saliency is not None:
        record["saliency"] = _saliency(saliency, wanted, model.num_classes, i)
    return record


def _stored(maps: torch.Tensor | None) -> torch.Tensor | None:
    """(n, h, w) maps as the page stores them: whole up to MAP_SIDE a side, else averaged over blocks of cells."""
    if maps is None or max(maps.shape[-2:]) <= MAP_SIDE:
        return maps
    import torch.nn.functional as F

    h, w = maps.shape[-2:]
    s = MAP_SIDE / max(h, w)
    return F.interpolate(maps[None].float(), size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")[0]


def _saliency(maps, wanted, num_classes, i) -> dict:
    """The saliency maps of the classes predicted in image i, downsampled to ≤ SALIENCY_SIDE and quantised."""
    import torch.nn.functional as F

    if not isinstance(maps, dict):
        arr = np.asarray(maps)
        if arr.ndim != 3 or arr.shape[0] != num_classes:
            raise ValueError(f"saliency[{i}]: expected a (K={num_classes}, H, W) array or a {{class index: (H, W) "
                             f"array}} dict, got shape {arr.shape}; pass one map per class.")
        maps = {c: arr[c] for c in range(num_classes)}
    out = {}
    for c in wanted:
        if c not in maps:
            continue
        m = torch.as_tensor(np.asarray(maps[c], dtype=np.float32))
        if m.ndim != 2:
            raise ValueError(f"saliency[{i}][{c}]: expected an (H, W) map, got shape {tuple(m.shape)}.")
        h, w = m.shape
        s = min(1.0, SALIENCY_SIDE / max(h, w))
        small = F.interpolate(m[None, None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="area")[0]
        out[str(c)] = {"h": int(small.shape[1]), "w": int(small.shape[2]), **quantise(small)}
    return out


def _patches(patches, boxes, P) -> list:
    if patches is None:
        return []
    return [{"png": _png(np.ascontiguousarray(patches[p])), "box": [float(v) for v in boxes[p]],
             "h": int(patches.shape[1]), "w": int(patches.shape[2])} for p in range(P)]


def _class_head(model) -> list:
    """Per class: grouped model, per group its own-class head weight and [[prototype, weight], …] (non-zero,
    largest first); prototype model, [[prototype, own-class last-layer weight], …]."""
    gh = model.group_head
    K = model.num_classes
    if gh is None:
        cls = model.prototypes.proto_class.cpu()
        own = model.last_layer.detach().cpu()[cls, torch.arange(len(cls))]
        return [[[p, float(own[p])] for p in torch.nonzero(cls == c).flatten().tolist()] for c in range(K)]
    w, idx, valid, head = gh.weight.detach().cpu(), gh.index.cpu(), gh.valid.cpu(), gh.head.detach().cpu()
    out = []
    for c in range(K):
        groups = []
        for g in range(gh.groups):
            members = [[int(idx[c, j]), float(w[c, g, j])] for j in range(idx.shape[1])
                       if valid[c, j] and w[c, g, j] > 0]
            members.sort(key=lambda m: -m[1])
            groups.append({"head": float(head[c, c * gh.groups + g]), "protos": members})
        out.append(groups)
    return out


def _check_inputs(model, dataset, classes, names, patches, boxes, saliency, max_images) -> None:
    if getattr(model, "prototypes", None) is None:
        raise ValueError("write_explorer needs a prototype model (protoseg, scaleprotoseg, scaleprotoseg_groups); "
                         f"{type(model).__name__} has no prototypes (deeplab is the black-box baseline).")
    if len(classes) != model.num_classes:
        raise ValueError(f"classes: {len(classes)} names for a model of {model.num_classes} classes; pass the "
                         "prepared dataset's meta.classes.")
    P = model.prototypes.num_prototypes
    if len(names) != P:
        raise ValueError(f"names: {len(names)} prototype names for {P} prototypes; pass "
                         "models.prototypes.prototype_names(model, classes).")
    if (patches is None) != (boxes is None):
        raise ValueError("patches and boxes go together (artifacts.read_patches(project_dir)[:2]); pass both or "
                         "neither.")
    if patches is not None and (np.asarray(patches).shape[:1] != (P,) or np.asarray(patches).ndim != 4
                                or np.asarray(boxes).shape != (P, 4)):
        raise ArtifactError(f"patches {np.asarray(patches).shape} / boxes {np.asarray(boxes).shape} do not fit {P} "
                            "prototypes (expected (P, h, w, 3) and (P, 4)); re-run the projection stage, which writes "
                            "patches.npz for this model.")
    if int(max_images) < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}.")
    if saliency is not None and not callable(saliency):
        if not isinstance(saliency, dict):
            raise ValueError(f"saliency: expected a dict {{image index: maps}} or a function (x, classes) → maps, got "
                             f"{type(saliency).__name__}.")
        bad = [k for k in saliency if not isinstance(k, (int, np.integer)) or not 0 <= int(k) < len(dataset)]
        if bad:
            raise ValueError(f"saliency: keys {bad[:5]} are not image indices of the split (0..{len(dataset) - 1}).")


def _scale_labels(model) -> list[str]:
    rates = list(getattr(model.aspp, "rates", ()))
    if model.prototypes.num_scales == len(rates):
        return [f"rate {r}" for r in rates]
    return [f"rates {'+'.join(map(str, rates))} (summed)"] if rates else []


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data) -> str:
    """JSON for a `<script type="application/json">` block: `<`, `>`, `&` and U+2028/9 as \\u escapes, so no
    value (a class named `</script><script>…`) can close the block or start markup; JSON.parse reads it back."""
    text = json.dumps(data, allow_nan=False)
    return text.translate(str.maketrans(_SCRIPT_ESCAPES))


def _html_escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

