"""Import the authors' released ProtoSeg / ScaleProtoSeg checkpoints as ordinary checkpoints of this repository.

    python -m scaleprotoseg.import_official SRC OUT --dataset pascal --method scaleprotoseg_groups

The released files are whole modules pickled by `torch.save(model)` (recorded on a CUDA device, by PyTorch
1.x, in the zip or the legacy format); a plain state dict of a released model is accepted too. The file is
read without importing the released code and without running anything from it (`released.unpickle`), its
tensors and tables are mapped onto our model (`released.mapping`: every tensor used, every shape checked
against the preset), and OUT is written as a checkpoint that `models.build.load_model` loads like any other
(phase "released"). Stage-1 files are the released models after projection, de-duplication and fine-tuning;
group files are evaluated after thresholding (a file thresholded by the authors is already).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from .config import PROTOTYPE_METHODS, RunConfig, load_config
from .errors import ArtifactError, ConfigError, ScaleProtoSegError
from .models.build import build_for
from .models.checkpoint import save_checkpoint
from .released.mapping import describe, to_ours
from .released.unpickle import read_checkpoint

PHASE = "released"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _group_summary(model) -> dict:
    gh = model.group_head
    if gh is None:
        return {}
    w = gh.weight[gh.valid_weights()]
    nonzero = w[w != 0]
    return {"groups": gh.groups,
            "group_weights_zero_%": round(100.0 * float((w == 0).float().mean()), 3) if w.numel() else 0.0,
            "smallest_nonzero_group_weight": float(nonzero.min()) if nonzero.numel() else None,
            "prototypes_used": int(gh.used_prototypes().sum())}


def import_released(src: str | Path, out: str | Path, cfg: RunConfig, classes: list[str]) -> dict:
    """Read the released checkpoint `src`, map it onto `cfg.method`'s model for the dataset whose classes
    are `classes` (the prepared data's class list), write our checkpoint `out` atomically and return a summary:
    file format and recorded devices, the released class, prototype counts (total and per scale × class),
    scales, groups, and `mapping` (released tensor name → our state-dict entry)."""
    src, out = Path(src), Path(out)
    if cfg.method not in PROTOTYPE_METHODS:
        raise ConfigError(f"--method {cfg.method!r}: the released checkpoints are prototype models; choose one of "
                          f"{list(PROTOTYPE_METHODS)}.")
    loaded = read_checkpoint(src)
    released = describe(loaded.obj, src, cfg.method)
    model = build_for(cfg, len(classes), offline=True)
    state, report = to_ours(released, cfg, list(classes), model, src)
    model.load_state_dict(state)
    summary = {
        "source": src.name,
        "sha256": _sha256(src),
        "bytes": src.stat().st_size,
        "format": loaded.format,
        "recorded_on": list(loaded.locations),
        "released_class": released.source,
        "method": cfg.method,
        "dataset": cfg.dataset,
        "trunk": released.trunk,
        "msc_scales": list(cfg.model.msc_scales),
        **{k: v for k, v in report.items() if k != "mapping"},
        "de_duplicated": report["prototypes"] < report["prototypes_full"],
        **_group_summary(model),
    }
    save_checkpoint(out, model, cfg.to_dict(), phase=PHASE, step=0, classes=list(classes), released=dict(summary))
    return {**summary, "mapping": report["mapping"]}


def _classes(dataset: str, data: Path | None, root: Path) -> list[str]:
    """The class names the checkpoint records: the prepared data's (its meta.json), else the fixed tables."""
    from .data.class_names import CITYSCAPES_CLASSES, PASCAL_CLASSES
    from .data.prepared import read_meta

    data = data if data is not None else root / "artifacts" / "prepared" / dataset
    if (data / "meta.json").is_file():
        return list(read_meta(data).classes)
    fixed = {"pascal": PASCAL_CLASSES, "cityscapes": CITYSCAPES_CLASSES}
    if dataset in fixed:
        return list(fixed[dataset])
    raise ArtifactError(f"{data}: no prepared {dataset} data to read the class names from; run `dvc repro prepare` "
                        "with experiment.dataset set to it, or pass --data <prepared folder>.")


def main(argv: list[str] | None = None) -> int:
    from .paths import repo_root

    parser = argparse.ArgumentParser(prog="python -m scaleprotoseg.import_official", description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="the released checkpoint (.pth)")
    parser.add_argument("out", type=Path, help="where to write our checkpoint")
    parser.add_argument("--dataset", required=True, help="the preset in params.yaml (pascal, cityscapes, ade20k, …)")
    parser.add_argument("--method", required=True, choices=PROTOTYPE_METHODS)
    parser.add_argument("--params", type=Path, default=None, help="params.yaml (default: the repository's)")
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared data folder for the class names (default: artifacts/prepared/<dataset>)")
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a params.yaml key, added if the preset does not list it (as `dvc exp run -S ++KEY=VALUE` does; repeatable)")
    args = parser.parse_args(argv)
    try:
        import yaml

        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. presets.pascal.model.msc_scales=[0.5,0.75].")
            overrides[key] = yaml.safe_load(value)
        try:
            root = repo_root()
        except FileNotFoundError as exc:
            if args.params is None:
                raise ConfigError(f"{exc} Or pass --params (and --data).") from exc
            root = Path.cwd()
        cfg = load_config(args.params or root / "params.yaml", dataset=args.dataset, method=args.method,
                          overrides=overrides)
        summary = import_released(args.src, args.out, cfg, _classes(args.dataset, args.data, root))
    except ScaleProtoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary.pop("mapping")
    summary.pop("counts_per_scale_class")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
