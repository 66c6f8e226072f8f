"""The model card (README.md) of a model package, generated from its config.json and the evaluate and
interpret stages' `summary.json`. The YAML front matter is the Hugging Face Hub's model card metadata."""

from __future__ import annotations

from string import Template

METHODS = {
    "deeplab": "DeepLab-v2, the black-box baseline (no prototypes)",
    "protoseg": "ProtoSeg: a prototype layer on DeepLab-v2 features, one set of prototypes per class",
    "scaleprotoseg": "ScaleProtoSeg: prototypes per class and per scale of the ASPP head",
    "scaleprotoseg_groups": "ScaleProtoSeg with the sparse group head (stage 2): groups of prototypes per class",
}

CARD = Template("""---
license: $licence
library_name: scaleprotoseg
pipeline_tag: image-segmentation
tags:
- image-segmentation
- interpretability
- prototypes
- $method
metrics:
- mean_iou
---

# $method on $dataset (seed $seed)

$description. $n_classes classes; trained with seed $seed, $precision precision.

## Evaluation

$evaluation

## Interpretability

$interpretability
$gallery
## Classes

| index | class | label value | colour |
|---|---|---|---|
$classes

## Training settings

$training

## How to use

Predict a folder of images (masks as palette PNGs in the dataset's label values, overlays, a CSV of class
areas and of the pixels each prototype or group won):

```
python -m scaleprotoseg.predict --model <this folder> --images photos/ --out predictions/ --overlay
```

In Python (reads `config.json` and `model.safetensors` only; nothing is unpickled):

```python
from scaleprotoseg.package import load_pretrained

model, cfg, config = load_pretrained("<this folder>")
logits = model.predict_logits(x)  # x: (B, 3, H, W) normalised with config["normalisation"]
```

Explain one image: `python -m scaleprotoseg.explain --checkpoint <this folder> --image photo.jpg --out explained/`.

## Files

This folder has the Hugging Face Hub layout of a model repository: `model.safetensors` (the weights),
`config.json` (everything needed to rebuild the network: method, the model section, class names, label values
and colours, normalisation, prototype and group tables, the full configuration), this card$extra_files.
`huggingface_hub.upload_folder(folder_path=..., repo_id=...)` publishes it as it is.

## Licence

$licence_text
""")


def _number(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _scalars(summary: dict | None, skip=()) -> list[tuple[str, str]]:
    if not summary:
        return []
    return [(k, _number(v)) for k, v in summary.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _table(rows: list[tuple[str, str]], head=("metric", "value")) -> str:
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def render(config: dict, evaluate: dict | None, interpret: dict | None, files, licence: str) -> str:
    """The card's Markdown text; `files`: the other files of the package (gallery.png, patches.npz)."""
    gallery = "gallery.png" in files
    cfg = config["config"]
    ev = _scalars(evaluate, skip=("seconds",))
    if ev:
        evaluation = (f"Whole-image evaluation on the validation split of `{config['dataset']}` (the evaluate stage):\n\n"
                      + _table(ev))
    else:
        evaluation = "No evaluation summary was given when this package was made (the evaluate stage's summary.json)."
    it = _scalars(interpret, skip=("seconds",))
    if it:
        interpretability = "Metrics of the interpret stage (consistency, stability, sparsity, overlaps):\n\n" + _table(it)
    elif interpret and interpret.get("note"):
        interpretability = str(interpret["note"])
    else:
        interpretability = "No interpretability summary was given when this package was made (the interpret stage's summary.json)."
    if config.get("prototypes"):
        p = config["prototypes"]
        interpretability += f"\n\n{p['count']} prototypes of dimension {p['dimension']}"
        if config.get("groups"):
            g = config["groups"]
            interpretability += (f", {g['per_class']} groups per class ({g['nonzero_weights']} of {g['weights']} group "
                                 "weights non-zero)")
        interpretability += "."
    train = cfg.get("train") or {}
    training = _table([(k, _number(v)) for k, v in train.items() if isinstance(v, (int, float, str)) or v is None]
                      + [(f"model.{k}", str(v)) for k, v in (cfg.get("model") or {}).items()], head=("setting", "value"))
    classes = "\n".join(f"| {i} | {c} | {v} | `#{''.join(f'{x:02x}' for x in rgb)}` |"
                        for i, (c, v, rgb) in enumerate(zip(config["classes"], config["label_values"], config["palette"])))
    extra = [", `gallery.png` (the prototype gallery)" if gallery else ""]
    extra.append(", `patches.npz` (the prototypes' source patches)" if "patches.npz" in files else "")
    licence_text = (f"`{licence}`." if licence != "other" else
                    "Not set (`other`): the weights follow the licence of the data they were trained on; state it here "
                    "before publishing.")
    return CARD.substitute(
        licence=licence, method=config["method"], dataset=config["dataset"], seed=config.get("seed"),
        description=METHODS.get(config["method"], config["method"]), n_classes=len(config["classes"]),
        precision=config.get("precision", "auto"), evaluation=evaluation, interpretability=interpretability,
        gallery="\n![prototype gallery](gallery.png)\n" if gallery else "", classes=classes, training=training,
        extra_files="".join(extra), licence_text=licence_text)
