"""Model packages: a trained model that loads anywhere without unpickling anything.

A package is a folder in the Hugging Face Hub layout (a model repository's files):

```
<package>/
  model.safetensors   the weights (safetensors: tensors and a JSON header, no code)
  config.json         everything needed to rebuild the network (see `package_config`)
  README.md           the model card (`model_card.render`): method, dataset, seed, metrics, settings, usage
  gallery.png         the prototype gallery of the interpret stage, when there is one
  patches.npz         the projection's source patches (numpy arrays, read without pickle), when there are any
```

`load_pretrained(folder)` reads `config.json` (validated: a missing key or a wrong type names the key and
the file), rebuilds the network with `models.build.rebuild` (the same code that rebuilds a `model.pt`) and
loads `model.safetensors`: JSON and safetensors only, so a poisoned pickle beside them is never opened.
`huggingface_hub.upload_folder(folder_path=<package>, repo_id=...)` publishes a package as it is.

    python -m scaleprotoseg.package --model artifacts/project/embedded/scaleprotoseg/seed-0/model.pt --out my_package \\
        [--evaluate reports/evaluate/embedded/scaleprotoseg/seed-0] [--interpret reports/interpret/embedded/scaleprotoseg/seed-0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .config import RunConfig
from .errors import ArtifactError, ScaleProtoSegError

FORMAT = "scaleprotoseg-package-v1"
WEIGHTS, CONFIG, CARD, GALLERY, PATCHES = "model.safetensors", "config.json", "README.md", "gallery.png", "patches.npz"
DEFAULT_LICENCE = "other"  # the Hub's value for "see the card": set the licence of your weights and data

# The 19 Cityscapes train-id colours of the dataset's own tools (cityscapesScripts' labels.py).
CITYSCAPES_COLOURS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                      (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))


def label_scheme(dataset: str, num_classes: int) -> tuple[list[int], list[list[int]]]:
    """(label value, RGB colour) of each class in the dataset's own label files: Pascal VOC ids with the VOC
    palette, Cityscapes labelIds with its colours, ADE20K's 1..150 (0 = other), EM's 0 (membrane) / 255
    (cell); class indices otherwise. Colours are the reports' (`plots.class_palette`) where the dataset has none."""
    values = list(range(num_classes))
    colours = None
    if dataset == "pascal":
        from .data.readers import voc_palette

        colours = voc_palette().reshape(256, 3)[:num_classes].tolist()
    elif dataset == "cityscapes" and num_classes == len(CITYSCAPES_COLOURS):
        from .data.sources import CITYSCAPES_TRAINID_TO_LABELID

        values = [int(CITYSCAPES_TRAINID_TO_LABELID[k]) for k in range(num_classes)]
        colours = [list(c) for c in CITYSCAPES_COLOURS]
    elif dataset == "ade20k":
        values = [k + 1 for k in range(num_classes)]
    elif dataset == "em" and num_classes == 2:
        values = [0, 255]
    if colours is None:
        from .plots import class_palette

        colours = np.round(class_palette(num_classes) * 255).astype(int).tolist()
    return values, [[int(v) for v in c] for c in colours]


def package_config(cfg: RunConfig, payload: dict) -> dict:
    """config.json of a model: identity, classes with their label values and colours, the normalisation and
    evaluation input size, the prototype and group tables, where it came from and the full RunConfig (from
    which `load_pretrained` rebuilds the network)."""
    classes = [str(c) for c in payload["classes"]]
    values, palette = label_scheme(cfg.dataset, len(classes))
    state = payload["state_dict"]
    prototypes = groups = None
    if "prototypes.vectors" in state:
        prototypes = {"count": int(state["prototypes.vectors"].shape[0]),
                      "dimension": int(np.prod(state["prototypes.vectors"].shape[1:])),
                      "class": state["prototypes.proto_class"].tolist(), "scale": state["prototypes.proto_scale"].tolist()}
    if "group_head.weight" in state:
        w, valid = state["group_head.weight"], state["group_head.valid"]
        groups = {"per_class": int(w.shape[1]),
                  "nonzero_weights": int(((w != 0) & valid[:, None, :]).sum()), "weights": int(valid.sum()) * int(w.shape[1])}
    return {
        "format": FORMAT, "library": "scaleprotoseg", "method": cfg.method, "dataset": cfg.dataset, "seed": cfg.seed,
        "classes": classes, "label_values": values, "palette": palette, "void": 255,
        "normalisation": {"mean": list(cfg.data.mean), "std": list(cfg.data.std), "eval_size": cfg.data.eval_size,
                          "eval_short_side": cfg.data.eval_short_side},
        "precision": cfg.precision, "prototypes": prototypes, "groups": groups,
        "source": json.loads(json.dumps({"phase": payload.get("phase"), "step": payload.get("step"),
                                         **({"released": payload["released"]} if "released" in payload else {})},
                                        default=str)),  # an imported checkpoint: what it was read from
        "config": json.loads(json.dumps(cfg.to_dict(), default=str)),
    }


def write_package(checkpoint: str | Path, out_dir: str | Path, evaluate_dir: str | Path | None = None,
                  interpret_dir: str | Path | None = None, licence: str = DEFAULT_LICENCE,
                  stage_hint: str = "the training stage", expect: RunConfig | None = None) -> dict:
    """Package the model of `checkpoint` (a `model.pt`) into `out_dir`, replaced as a whole. The card carries
    the metrics of the evaluate and interpret stages' `summary.json` (when given and present) and the
    interpret stage's prototype gallery; the projection's source patches beside the checkpoint come along."""
    from safetensors.torch import save_file

    from . import model_card
    from .models.build import load_model

    _, cfg, payload = load_model(checkpoint, "cpu", stage_hint, expect)
    config = package_config(cfg, payload)
    summaries = {k: _read_summary(d) for k, d in (("evaluate", evaluate_dir), ("interpret", interpret_dir))}
    gallery = Path(interpret_dir) / "details" / GALLERY if interpret_dir is not None else None
    patches = Path(checkpoint).parent / PATCHES
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in payload["state_dict"].items()}
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": FORMAT, "method": cfg.method})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if gallery is not None and gallery.is_file():
            shutil.copyfile(gallery, tmp / GALLERY)
        if patches.is_file():
            shutil.copyfile(patches, tmp / PATCHES)
        (tmp / CARD).write_text(model_card.render(config, summaries["evaluate"], summaries["interpret"],
                                                  [p.name for p in tmp.iterdir()], licence=licence))
    return {"folder": str(out_dir), "method": cfg.method, "files": sorted(p.name for p in out_dir.iterdir()),
            "miou": (summaries["evaluate"] or {}).get("miou")}


def _read_summary(folder) -> dict | None:
    path = Path(folder) / "summary.json" if folder is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run the stage that writes it.") from exc


# -- reading ---------------------------------------------------------------------------------------------

_REQUIRED = {"format": str, "method": str, "dataset": str, "classes": list, "label_values": list, "palette": list,
             "normalisation": dict, "config": dict}
REMAKE = "re-make it with `python -m scaleprotoseg.package --model <model.pt> --out <folder>` (or `dvc repro`)"


def read_config(folder: str | Path) -> dict:
    """config.json of package `folder`, checked: every required key present with its type, one label value
    and colour per class. Errors name the file and the key."""
    path = Path(folder) / CONFIG
    if not Path(folder).is_dir():
        raise ArtifactError(f"{folder}: no such model package folder (it holds {WEIGHTS}, {CONFIG} and {CARD}).")
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {folder} is not a model package; {REMAKE}.")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); {REMAKE}.") from exc
    if not isinstance(config, dict):
        raise ArtifactError(f"{path} holds a {type(config).__name__}, not a JSON object; {REMAKE}.")
    for key, kind in _REQUIRED.items():
        if key not in config:
            raise ArtifactError(f"{path}: key {key!r} is missing; {REMAKE}.")
        if not isinstance(config[key], kind):
            raise ArtifactError(f"{path}: key {key!r} must be a JSON {'string' if kind is str else kind.__name__.replace('dict', 'object')}"
                                f", got {type(config[key]).__name__} {config[key]!r:.60}; {REMAKE}.")
    if config["format"] != FORMAT:
        raise ArtifactError(f"{path}: format {config['format']!r} is not {FORMAT!r}; {REMAKE}.")
    n = len(config["classes"])
    if not all(isinstance(c, str) for c in config["classes"]):
        raise ArtifactError(f"{path}: key 'classes' must list class names (strings).")
    if len(config["label_values"]) != n or not all(isinstance(v, int) and 0 <= v < 256 for v in config["label_values"]):
        raise ArtifactError(f"{path}: key 'label_values' must hold {n} integers 0..255 (one per class).")
    if len(config["palette"]) != n or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in c)
                                              for c in config["palette"]):
        raise ArtifactError(f"{path}: key 'palette' must hold {n} [R, G, B] colours of integers 0..255 (one per class).")
    return config


def is_package(path: str | Path) -> bool:
    return Path(path).is_dir()


def load_pretrained(folder: str | Path, device="cpu"):
    """(model in eval mode on `device`, its RunConfig, config.json) of package `folder`: JSON and safetensors
    only, nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models.build import rebuild, stored_config

    folder = Path(folder)
    config = read_config(folder)
    cfg = stored_config(config["config"], folder / CONFIG, "`python -m scaleprotoseg.package` (or `dvc repro`)")
    if cfg.method != config["method"] or cfg.dataset != config["dataset"]:
        raise ArtifactError(f"{folder / CONFIG}: 'method'/'dataset' ({config['method']}, {config['dataset']}) differ from "
                            f"its 'config' ({cfg.method}, {cfg.dataset}); {REMAKE}.")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ArtifactError(f"{weights} is missing; {REMAKE}.")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{weights} is not a readable safetensors file ({exc}); {REMAKE}.") from exc
    try:
        model = rebuild(cfg, len(config["classes"]), state)
    except (RuntimeError, KeyError) as exc:
        raise ArtifactError(f"{weights} does not fit the network {folder / CONFIG} describes ({str(exc)[:300]}); {REMAKE}.") from exc
    return model.to(device).eval(), cfg, config


def load_any(path: str | Path, device="cpu", stage_hint: str = "the training stage"):
    """(model, RunConfig, info) of a package folder or a `model.pt`; info holds at least `classes`,
    `label_values` and `palette` (for a `model.pt`: its dataset's, `label_scheme`)."""
    if is_package(path):
        return load_pretrained(path, device)
    from .models.build import load_model

    model, cfg, payload = load_model(path, device, stage_hint)
    values, palette = label_scheme(cfg.dataset, len(payload["classes"]))
    return model, cfg, {"classes": [str(c) for c in payload["classes"]], "label_values": values, "palette": palette,
                        "method": cfg.method, "dataset": cfg.dataset}


def patches_dir(path: str | Path) -> Path:
    """Where the source patches of a model are: inside a package, beside a `model.pt`."""
    return Path(path) if is_package(path) else Path(path).parent


# -- command line ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scaleprotoseg.package", description=(
        "Package a trained model (model.pt) as model.safetensors + config.json + README.md (a model card), the "
        "Hugging Face Hub layout; load it with scaleprotoseg.package.load_pretrained."))
    ap.add_argument("--model", required=True, help="a model.pt: artifacts/project/<dataset>/<method>/seed-<n>/ (or train/ for "
                    "deeplab), or one written by `python -m scaleprotoseg.import_official`")
    ap.add_argument("--out", required=True, help="the package folder (replaced as a whole)")
    ap.add_argument("--evaluate", default=None, help="reports/evaluate/<dataset>/<method>/seed-<n>: its summary.json goes into the card")
    ap.add_argument("--interpret", default=None, help="reports/interpret/<dataset>/<method>/seed-<n>: its metrics and gallery")
    ap.add_argument("--licence", default=DEFAULT_LICENCE, help=f"the card's licence field (default {DEFAULT_LICENCE!r})")
    args = ap.parse_args(argv)
    try:
        info = write_package(args.model, args.out, args.evaluate, args.interpret, args.licence)
    except ScaleProtoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {info['folder']}: {', '.join(info['files'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
