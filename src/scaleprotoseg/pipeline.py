"""One function per pipeline stage; the notebooks are thin calls to these.

Each stage notebook has a `smoke` parameter. `smoke=True` (the notebook's default, what nbval runs)
shrinks every size through `SMOKE_OVERRIDES`, rebases every path into a fresh temporary folder and builds
the upstream artifacts the stage needs there, so a notebook runs on its own in seconds and never touches
pipeline outputs. `dvc.yaml` passes `smoke=False` and the real paths.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import plots
from .config import RunConfig, load_config, method_names, read_params, set_key  # noqa: F401 (method_names: notebooks)
from .data.loader import eval_loader, train_loader
from .data.prepared import PreparedDataset, read_meta
from .data.synthetic import SyntheticSpec, generate
from .errors import ArtifactError, ConfigError
from .evaluation import evaluate
from .io import atomic_path, read_json, write_csv, write_json
from .losses import msc_mean, pixel_cross_entropy
from .metrics.segmentation import iou_from_confusion, summarise
from .models.build import build_model
from .paths import repo_root
from .training.checkpoint import load_checkpoint, save_checkpoint
from .training.loop import clear_resume, make_optimizer, resolve_device, run_phase

SMOKE_OVERRIDES = {
    "experiment.dataset": "embedded",
    "embedded.image_size": 48,
    "embedded.n_train": 6,
    "embedded.n_val": 3,
    "embedded.max_objects": 2,
    "presets.embedded.data.crop": 40,
    "presets.embedded.model.width": 8,
    "presets.embedded.deeplab.steps": 2,
    "presets.embedded.deeplab.batch_size": 2,
    "presets.embedded.deeplab.log_every": 1,
    "presets.embedded.deeplab.checkpoint_every": 1,
    "presets.embedded.deeplab.val_every": 0,
    "presets.embedded.eval.n_examples": 2,
}
for _m in ("protoseg", "scaleprotoseg"):
    SMOKE_OVERRIDES.update({f"presets.embedded.{_m}.{k}": v for k, v in {
        "features": 8, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2, "finetune_steps": 1, "log_every": 1,
        "checkpoint_every": 1, "val_every": 0, "val_images": 2}.items()})
SMOKE_OVERRIDES.update({f"presets.embedded.scaleprotoseg_groups.{k}": v for k, v in {
    "batch_size": 2, "warmup_steps": 1, "joint_steps": 2, "log_every": 1, "checkpoint_every": 1, "val_every": 0,
    "val_images": 2}.items()})


def resolve(path: str | Path) -> Path:
    """Paths in params.yaml and dvc.yaml are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else repo_root() / path


def load_params(params_path: str | Path, smoke: bool) -> dict:
    params = read_params(resolve(params_path))
    if smoke:
        for key, value in SMOKE_OVERRIDES.items():
            set_key(params, key, value)
    return params


# --------------------------------------------------------------------------------------------------------
# stage context

# The folder layout shared by dvc.yaml, the notebooks' defaults and smoke runs (relative to a root).
LAYOUT = {
    "prepared": "artifacts/prepared/{dataset}",
    "train": "artifacts/train/{method}",
    "project": "artifacts/project/{method}",
    "train_reports": "reports/train/{method}",
    "evaluate_reports": "reports/evaluate/{method}",
    "interpret_reports": "reports/interpret/{method}",
}


def layout(key: str, dataset: str = "embedded", method: str = "deeplab") -> str:
    return LAYOUT[key].format(dataset=dataset, method=method)


@dataclass
class Stage:
    """What a stage notebook works with: the resolved config and its folders (absolute paths)."""

    cfg: RunConfig
    params: dict
    paths: dict[str, Path]
    root: Path
    smoke: bool

    def describe(self) -> pd.DataFrame:
        """The resolved configuration as a two-column table, for the notebook record."""
        flat = pd.json_normalize(self.cfg.to_dict(), sep=".").T.reset_index()
        flat.columns = ["key", "value"]
        flat["value"] = flat["value"].astype(str)
        return flat.set_index("key")


def stage(name: str, *, smoke: bool, params_path: str = "params.yaml", dataset: str | None = None,
          method: str = "deeplab", paths: dict[str, str] | None = None) -> Stage:
    """Resolve the config and folders of stage `name`.

    `paths` are relative to the repository root; with `smoke=True` they are rebased into a fresh temporary
    folder, every size shrinks (SMOKE_OVERRIDES) and the upstream artifacts of the stage are built there.
    """
    params = load_params(params_path, smoke)
    cfg = load_config(params, dataset=dataset, method=method)
    root = Path(tempfile.mkdtemp(prefix=f"scaleprotoseg-smoke-{name}-")) if smoke else repo_root()
    resolved = {k: (Path(v) if Path(v).is_absolute() else root / v) for k, v in (paths or {}).items()}
    if smoke:
        _smoke_inputs(name, cfg, params, root)
    return Stage(cfg, params, resolved, root, smoke)


def _smoke_inputs(name: str, cfg: RunConfig, params: dict, root: Path) -> None:
    """Build, under `root`, what stage `name` reads, with the same layout as the real pipeline."""
    if name == "prepare":
        return
    p = {k: root / layout(k, cfg.dataset, cfg.method) for k in LAYOUT}
    prepare_dataset(params, cfg.dataset, p["prepared"])
    if name == "report":
        for m in method_names(params):
            _smoke_chain(load_config(params, dataset=cfg.dataset, method=m), root, upto="evaluate")
        return  # the report works without interpretability metrics (its columns stay empty)
    upto = {"train": None, "project": "train", "evaluate": "project", "interpret": "project", "export": "project"}[name]
    if cfg.start is not None:
        _smoke_chain(cfg.start, root, upto="project")
    if upto:
        _smoke_chain(cfg, root, upto=upto)


def _smoke_chain(cfg: RunConfig, root: Path, upto: str) -> None:
    """Run train → project → evaluate for `cfg.method` under `root`, up to and including `upto`."""
    p = {k: root / layout(k, cfg.dataset, cfg.method) for k in LAYOUT}
    if (p["evaluate_reports"] / "metrics.json").is_file() or (upto == "project" and (p["project"] / "model.pt").is_file()):
        return
    if cfg.start is not None:
        _smoke_chain(cfg.start, root, upto="project")
    train(cfg, p["prepared"], p["train"], p["train_reports"], progress=False, start_checkpoint=start_checkpoint(cfg, root))
    if upto in ("project", "evaluate"):
        project(cfg, p["prepared"], p["train"], p["project"], progress=False)
    if upto == "evaluate":
        evaluate_stage(cfg, p["prepared"], p["train"], p["project"], p["evaluate_reports"], progress=False)


def start_checkpoint(cfg: RunConfig, root: Path) -> Path | None:
    """The model `cfg.method` starts from (scaleprotoseg_groups: scaleprotoseg's projected model)."""
    return root / layout("project", cfg.dataset, cfg.start.method) / "model.pt" if cfg.start is not None else None


# --------------------------------------------------------------------------------------------------------
# 10 prepare


def synthetic_spec(params: dict) -> SyntheticSpec:
    section = params.get("embedded")
    if not isinstance(section, dict):
        raise ConfigError("params.yaml has no 'embedded' section (the embedded dataset's generator settings).")
    valid = set(SyntheticSpec.__dataclass_fields__)
    unknown = set(section) - valid
    if unknown:
        raise ConfigError(f"embedded: unknown key(s) {sorted(unknown)}; valid keys: {sorted(valid)}.")
    for key, value in section.items():
        expected = type(getattr(SyntheticSpec(), key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (expected is int and not isinstance(value, int)):
            raise ConfigError(f"embedded.{key} must be {'an integer' if expected is int else 'a number'}, got {value!r}.")
    return SyntheticSpec(**section)


def prepare_dataset(params: dict, dataset: str, root: Path, progress: bool = False):
    """Write the prepared dataset for `dataset` under `root` (atomically); return its meta.

    Real datasets are read from `data_sources.<dataset>.root` in their original layout (never modified)."""
    if dataset == "embedded":
        return generate(synthetic_spec(params), root)
    from .data.sources import SCANNERS, prepare_source

    spec = (params.get("data_sources") or {}).get(dataset)
    if dataset not in SCANNERS or not isinstance(spec, dict):
        raise ConfigError(
            f"No preparation for dataset {dataset!r}: readers exist for {sorted(SCANNERS)} (data_sources.<name> "
            "in params.yaml) and the embedded dataset; a new dataset can use the folder reader (README)."
        )
    raw = resolve(spec.get("root", f"data/{dataset}"))
    if not raw.is_dir():
        raise ConfigError(f"data_sources.{dataset}.root: {raw} does not exist; put the dataset there in its original "
                          "layout (README, 'Raw datasets') or point the key at it.")
    scan = SCANNERS[dataset]
    source = scan(raw, seed=int(spec["seed"])) if "seed" in spec else scan(raw)
    res = prepare_source(source, root, workers=int(spec.get("workers", 2)),
                         skip_corrupt=bool(spec.get("skip_corrupt", False)), progress=progress)
    print(f"{dataset}: converted {res.converted} sample(s), kept {res.reused} unchanged since the last preparation.")
    if res.skipped:
        print(f"skipped {len(res.skipped)} unreadable sample(s) (data_sources.{dataset}.skip_corrupt): {res.skipped[:20]}")
    for note in source.notes:  # what the reader had to assume (e.g. a names file not found)
        print(f"note: {note}")
    return res.meta


def dataset_preview(root: Path, split: str = "train", n: int = 6, seed: int = 0):
    """A grid of `n` seeded samples with their class and part masks."""
    ds = PreparedDataset(root, split)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    images = [ds.image(i) for i in idx]
    labels = [ds.label(i) for i in idx]
    parts = [ds.parts(i) for i in idx] if ds.meta.has_parts else None
    return plots.dataset_grid(images, labels, parts, ds.meta.classes, titles=[ds.ids[i] for i in idx])


def dataset_summary(root: Path) -> pd.DataFrame:
    """Per split and class: images containing the class and its share of non-void pixels."""
    meta = read_meta(root)
    rows = []
    for split in meta.splits:
        ds = PreparedDataset(root, split)
        counts = np.zeros(meta.num_classes, np.int64)
        present = np.zeros(meta.num_classes, np.int64)
        for i in range(len(ds)):
            c = np.bincount(ds.label(i).ravel(), minlength=256)[: meta.num_classes]
            counts += c
            present += c > 0
        total = counts.sum()
        for k, name in enumerate(meta.classes):
            rows.append({"split": split, "class": name, "images": int(present[k]), "pixel_%": round(100 * counts[k] / max(total, 1), 2)})
    return pd.DataFrame(rows).pivot(index="class", columns="split").reindex(meta.classes)


# --------------------------------------------------------------------------------------------------------
# 20 train


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class LiveLogger:
    """Curves to DVCLive (metrics.json + plots/metrics/*.tsv) so `dvc plots` and `dvc exp show` read them."""

    def __init__(self, directory: Path, resume: bool):
        from dvclive import Live

        self.live = Live(str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None)

    def __call__(self, step: int, metrics: dict) -> None:
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, float(v))
        self.live.make_summary()

    def end(self) -> None:
        self.live.end()


def train(cfg: RunConfig, data_root: Path, out_dir: Path, report_dir: Path, progress: bool = True,
          interrupt_at: int | None = None, start_checkpoint: Path | None = None) -> dict:
    """Train `cfg.method`; write `out_dir/model.pt` (the phase-end checkpoint) and curves under report_dir.

    scaleprotoseg_groups starts from `start_checkpoint` (scaleprotoseg's projected model)."""
    if cfg.method in ("protoseg", "scaleprotoseg"):
        return train_prototypes(cfg, data_root, out_dir, report_dir, progress, interrupt_at)
    if cfg.method == "scaleprotoseg_groups":
        return train_groups(cfg, data_root, out_dir, report_dir, start_checkpoint, progress, interrupt_at)
    out_dir, report_dir = Path(out_dir), Path(report_dir)
    meta = read_meta(data_root)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_model(cfg.method, cfg.model, meta.num_classes).to(device)
    t = cfg.train
    groups = model.param_groups()
    optimizer = make_optimizer(
        t.optimizer,
        [{"params": groups["trunk"], "lr": t.lr}, {"params": groups["head"], "lr": t.lr * t.head_lr_mult}],
        weight_decay=t.weight_decay,
        momentum=t.momentum,
    )
    resume_path = out_dir / "resume.pt"
    fingerprint = cfg.fingerprint("dataset", "method", "seed", "data", "model", "train")
    resuming = resume_path.is_file() and torch.load(resume_path, weights_only=True).get("fingerprint") == fingerprint
    logger = LiveLogger(report_dir / "dvclive", resume=resuming)
    val = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, t.val_images)

    def validate(step: int) -> dict:
        res = evaluate(model, val, meta.num_classes, device, progress=False)
        return {"val/miou": iou_from_confusion(res.confusion)[1]}

    def loss_fn(m, images, labels):
        return msc_mean(pixel_cross_entropy, m(images), labels)

    result = run_phase(
        model,
        phase="train",
        steps=t.steps,
        accumulation=t.accumulation,
        optimizer=optimizer,
        loss_fn=loss_fn,
        make_loader=lambda start: train_loader(data_root, "train", cfg.data, t.batch_size, t.steps, cfg.seed, start),
        device=device,
        resume_path=resume_path,
        fingerprint=fingerprint,
        poly_power=t.poly_power,
        log_every=t.log_every,
        checkpoint_every=t.checkpoint_every,
        logger=logger,
        validate=validate,
        val_every=t.val_every,
        interrupt_at=interrupt_at,
        progress=progress,
    )
    logger.end()
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="train", step=t.steps, classes=list(meta.classes))
    clear_resume(resume_path)
    summary = {
        "method": cfg.method,
        "steps": t.steps,
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 2),
        "last_loss": result.last_loss,
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(out_dir / "train_summary.json", summary)
    return summary


def build_for(cfg: RunConfig, num_classes: int, offline: bool = False):
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


def load_model(checkpoint: str | Path, device="cpu", stage_hint: str = "the training stage"):
    """Rebuild a trained model from its checkpoint alone (never downloads weights)."""
    payload = load_checkpoint(checkpoint, stage_hint)
    cfg = RunConfig.from_dict(payload["config"])
    model = build_for(cfg, len(payload["classes"]), offline=True)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), cfg, payload


def _phase_checkpoint(path: Path, fingerprint: str):
    """A finished phase's checkpoint, if it belongs to this configuration (an interrupted run skips it)."""
    if path.is_file():
        payload = load_checkpoint(path)
        if payload.get("fingerprint") == fingerprint:
            return payload
    return None


def run_phases(model, cfg: RunConfig, phases, loss_for, data_root: Path, out_dir: Path, logger, device,
               progress: bool, interrupt_at: int | None, meta, step_offset: int = 0, after_update=None,
               val=None) -> list[dict]:
    """Run `phases` in order; each ends with `out_dir/<phase>.pt`, which the next one starts from."""
    from .training.phases import phase_spec, trunk_frozen

    t = cfg.train
    done = []
    offset = step_offset
    for k, phase in enumerate(phases):
        spec = phase_spec(model, phase, t)
        fingerprint = cfg.fingerprint("dataset", "method", "seed", "data", "model", "train", "start") + f":{phase}"
        ckpt = out_dir / f"{phase}.pt"
        finished = _phase_checkpoint(ckpt, fingerprint)
        if spec.steps == 0:
            continue
        if finished is not None:
            model.load_state_dict(finished["state_dict"])
            print(f"[{phase}] already finished ({ckpt}); continuing from it")
            for step, metrics in finished.get("history", []):  # its curves, for this run's logs
                if logger is not None:
                    logger(int(step), metrics)
            done.append({"phase": phase, "steps": spec.steps, "seconds": finished.get("seconds", 0.0), "resumed": "finished"})
            offset += spec.steps
            continue
        model.bn_eval = cfg_freeze_bn(cfg) or trunk_frozen(phase)
        optimizer = make_optimizer("adam", spec.groups)
        history: list = []

        def log(step, metrics, offset=offset, history=history):
            history.append([offset + step, {k: float(v) for k, v in metrics.items()}])
            if logger is not None:
                logger(offset + step, metrics)

        def validate(step):
            res = evaluate(model, val, meta.num_classes, device, progress=False)
            return {"val/miou": iou_from_confusion(res.confusion)[1]}

        result = run_phase(
            model, phase=phase, steps=spec.steps, accumulation=t.accumulation, optimizer=optimizer,
            loss_fn=loss_for(phase),
            make_loader=lambda start, k=k: train_loader(data_root, "train", cfg.data, t.batch_size, spec.steps, cfg.seed + k, start),
            device=device, resume_path=out_dir / f"resume_{phase}.pt", fingerprint=fingerprint,
            poly_power=spec.poly_power, log_every=t.log_every, checkpoint_every=t.checkpoint_every, logger=log,
            validate=validate if val is not None else None, val_every=t.val_every,
            after_update=after_update, interrupt_at=None if interrupt_at is None else interrupt_at - offset,
            progress=progress,
        )
        save_checkpoint(ckpt, model, cfg.to_dict(), phase=phase, step=spec.steps, classes=list(meta.classes),
                        fingerprint=fingerprint, seconds=result.seconds, history=history)
        clear_resume(out_dir / f"resume_{phase}.pt")
        done.append({"phase": phase, "steps": spec.steps, "seconds": round(result.seconds, 2), "resumed": result.resumed_from,
                     "last_loss": result.last_loss})
        offset += spec.steps
    model.bn_eval = cfg_freeze_bn(cfg)
    return done


def cfg_freeze_bn(cfg: RunConfig) -> bool:
    return (cfg.start or cfg).model.freeze_bn


def train_prototypes(cfg: RunConfig, data_root: Path, out_dir: Path, report_dir: Path, progress: bool = True,
                     interrupt_at: int | None = None) -> dict:
    """ProtoSeg / ScaleProtoSeg stage 1: warm-up then joint training (projection is the next stage)."""
    from .training.phases import STAGE1_PHASES, stage1_loss

    out_dir, report_dir = Path(out_dir), Path(report_dir)
    meta = read_meta(data_root)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model = build_for(cfg, meta.num_classes).to(device)
    t = cfg.train
    val = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, t.val_images)
    logger = LiveLogger(report_dir / "dvclive", resume=any((out_dir / f).is_file() for f in ("resume_warmup.pt", "resume_joint.pt", "warmup.pt")))
    phases = run_phases(model, cfg, STAGE1_PHASES, lambda ph: stage1_loss(t), data_root, out_dir, logger, device,
                        progress, interrupt_at, meta, val=val)
    logger.end()
    steps = t.warmup_steps + t.joint_steps
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="joint", step=steps, classes=list(meta.classes))
    return _train_summary(cfg, out_dir, model, device, phases, steps)


def train_groups(cfg: RunConfig, data_root: Path, out_dir: Path, report_dir: Path, start_checkpoint: Path | None,
                 progress: bool = True, interrupt_at: int | None = None) -> dict:
    """ScaleProtoSeg stage 2: group warm-up then group joint, from the projected scaleprotoseg model."""
    from .training.phases import GROUP_PHASES, group_loss

    out_dir, report_dir = Path(out_dir), Path(report_dir)
    if start_checkpoint is None or not Path(start_checkpoint).is_file():
        raise ArtifactError(f"{start_checkpoint}: scaleprotoseg_groups starts from the projected scaleprotoseg model; "
                            "run `dvc repro project@scaleprotoseg` first.")
    meta = read_meta(data_root)
    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    start, start_cfg, payload = load_model(start_checkpoint, device, "project@scaleprotoseg")
    if start_cfg.to_dict() != cfg.start.to_dict():
        raise ArtifactError(f"{start_checkpoint} was trained with other scaleprotoseg settings than params.yaml now has; "
                            "re-run `dvc repro project@scaleprotoseg`.")
    model = start
    model.add_groups(cfg.train.groups)
    # the projection's provenance and patches travel with the model, for the gallery
    src = Path(start_checkpoint).parent
    _copy_projection_records(src, out_dir)
    t = cfg.train
    val = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, t.val_images)
    logger = LiveLogger(report_dir / "dvclive", resume=any((out_dir / f).is_file() for f in ("resume_group_warmup.pt", "resume_group_joint.pt", "group_warmup.pt")))
    phases = run_phases(model, cfg, GROUP_PHASES, lambda ph: group_loss(t), data_root, out_dir, logger, device,
                        progress, interrupt_at, meta, after_update=model.group_head.project, val=val)
    logger.end()
    steps = t.warmup_steps + t.joint_steps
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="group_joint", step=steps, classes=list(meta.classes))
    return _train_summary(cfg, out_dir, model, device, phases, steps)


def _train_summary(cfg, out_dir, model, device, phases, steps) -> dict:
    summary = {
        "method": cfg.method,
        "steps": steps,
        "phases": phases,
        "seconds": round(sum(p["seconds"] for p in phases), 2),
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(Path(out_dir) / "train_summary.json", summary)
    return summary


def read_curves(dvclive_dir: Path) -> dict[str, pd.DataFrame]:
    """DVCLive's step-wise TSV files as DataFrames, keyed by metric name (e.g. train/loss)."""
    base = Path(dvclive_dir) / "plots" / "metrics"
    return {str(p.relative_to(base).with_suffix("")): pd.read_csv(p, sep="\t") for p in sorted(base.rglob("*.tsv"))}


# --------------------------------------------------------------------------------------------------------
# 30 project


def project(cfg: RunConfig, data_root: Path, train_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Projection stage: push + de-duplication + last-layer fine-tuning (+ ProtoSeg pruning); thresholding for
    the grouped model. DeepLab has no prototypes: it records that and evaluation uses its trained model."""
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    if not (train_dir / "model.pt").is_file():
        raise ArtifactError(f"{train_dir / 'model.pt'} not found; run the training stage first (`dvc repro train@{cfg.method}`).")
    if cfg.method == "deeplab":
        info = {"method": cfg.method, "prototypes": 0, "projected": False,
                "note": "deeplab is the black-box baseline: it has no prototypes to project; evaluation uses the trained model."}
    elif cfg.method == "scaleprotoseg_groups":
        info = threshold_groups(cfg, train_dir, out_dir)
    else:
        info = project_prototypes(cfg, data_root, train_dir, out_dir, progress)
    write_json(out_dir / "projection.json", info)
    return info


def projection_split(meta) -> str:
    return "project" if "project" in meta.splits else "train"


def project_prototypes(cfg: RunConfig, data_root: Path, train_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    from . import projection as pj
    from .models.prototypes import prototype_names
    from .training.phases import stage1_loss

    device = resolve_device(cfg.device)
    _seed_everything(cfg.seed)
    model, _, payload = load_model(train_dir / "model.pt", device)
    meta = read_meta(data_root)
    split = projection_split(meta)
    source = PreparedDataset(data_root, split)
    loader = eval_loader(data_root, split, cfg.data, 1)
    names = prototype_names(model, meta.classes)
    t0 = time.perf_counter()
    proj = pj.find_nearest(model, loader, device, progress, rule=cfg.train.projection_rule)
    seconds_pass = time.perf_counter() - t0
    with torch.no_grad():
        model.prototypes.vectors.copy_(proj.vectors)
    missing = [n for n, f in zip(names, proj.found.tolist()) if not f]
    table = pj.provenance_table(proj, names, model, source.ids, meta.classes)
    patches, boxes = pj.source_patches(proj, source)
    keep = pj.duplicates(model.prototypes.vectors.detach(), model.prototypes.proto_scale)
    kept_names = [names[i] for i in keep.tolist()]
    table["kept"] = [n in set(kept_names) for n in table.index]
    model.keep_prototypes(keep)
    ids = keep.cpu().numpy()
    info = {"method": cfg.method, "split": split, "images": len(source), "prototypes_before": len(names),
            "duplicates_removed": len(names) - len(ids), "no_eligible_pixel": missing,
            "projection_pass_seconds": round(seconds_pass, 2)}
    save_checkpoint(out_dir / "projected.pt", model, cfg.to_dict(), phase="projected", step=0, classes=list(meta.classes))
    t = cfg.train
    logger = None
    phases = run_phases(model, cfg, ("finetune",), lambda ph: stage1_loss(t), data_root, out_dir, logger, device,
                        progress, None, meta)
    if cfg.method == "protoseg" and t.prune:
        best_d, best_m = pj.nearest_patches(model, loader, device, t.prune_k, progress)
        keep_mask = pj.prune_mask(best_d, best_m, t.prune_threshold)
        pruned = [kept_names[i] for i in torch.nonzero(~keep_mask).flatten().tolist()]
        table["pruned"] = [n in set(pruned) for n in table.index]
        keep2 = torch.nonzero(keep_mask).flatten()
        ids = ids[keep2.cpu().numpy()]
        model.keep_prototypes(keep2)
        info["pruned"] = pruned
        save_checkpoint(out_dir / "pruned.pt", model, cfg.to_dict(), phase="pruned", step=0, classes=list(meta.classes))
        phases += run_phases(model, cfg, ("finetune",), lambda ph: stage1_loss(t), data_root, out_dir / "after_pruning",
                             None, device, progress, None, meta)
    info["prototypes"] = model.prototypes.num_prototypes
    info["phases"] = phases
    write_csv(table, out_dir / "provenance.csv")
    with atomic_path(out_dir / "patches.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, patches=patches[ids], boxes=boxes[ids], names=np.array([names[i] for i in ids]))
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="final", step=0, classes=list(meta.classes))
    return info


def provenance(project_dir: Path) -> pd.DataFrame:
    """The provenance table written by the projection (empty for deeplab)."""
    path = Path(project_dir) / "provenance.csv"
    return pd.read_csv(path, index_col=0) if path.is_file() else pd.DataFrame()


PROJECTION_RECORDS = ("provenance.csv", "patches.npz")


def read_patches(project_dir: Path):
    """(patches, boxes, names) saved by the projection, or None (deeplab)."""
    path = Path(project_dir) / "patches.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z["patches"], z["boxes"], list(z["names"])


def _copy_projection_records(src: Path, dst: Path) -> None:
    """Carry the projection's provenance and patches along with a model derived from it."""
    for name in PROJECTION_RECORDS:
        if (Path(src) / name).is_file():
            with atomic_path(Path(dst) / name) as tmp:
                tmp.write_bytes((Path(src) / name).read_bytes())


def gallery_figure(project_dir: Path, report_dir: Path, title: str):
    """Draw (and save as gallery.png) the source patches of the final prototypes; a note for deeplab."""
    saved = read_patches(project_dir)
    if saved is None:
        fig = plots.message_figure("No prototypes (black-box model): nothing to show.")
    else:
        fig = plots.prototype_gallery(*saved, title=title)
    plots.save_figure(fig, Path(report_dir) / "gallery.png")
    return show(Path(report_dir) / "gallery.png")


def threshold_groups(cfg: RunConfig, train_dir: Path, out_dir: Path) -> dict:
    """The grouped model is evaluated after zeroing group weights below the threshold (no renormalisation)."""
    from .models.prototypes import prototype_counts

    model, _, payload = load_model(train_dir / "model.pt")
    before = prototype_counts(model)
    model.group_head.threshold(cfg.train.threshold)
    after = prototype_counts(model)
    _copy_projection_records(train_dir, out_dir)
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="thresholded", step=0, classes=payload["classes"])
    return {"method": cfg.method, "threshold": cfg.train.threshold, "before_threshold": before, **after}


def final_checkpoint(train_dir: Path, project_dir: Path) -> Path:
    """The model a method is evaluated with: the projected one when projection produced it."""
    projected = Path(project_dir) / "model.pt"
    return projected if projected.is_file() else Path(train_dir) / "model.pt"


# --------------------------------------------------------------------------------------------------------
# 40 evaluate


def evaluate_stage(cfg: RunConfig, data_root: Path, train_dir: Path, project_dir: Path, report_dir: Path, progress: bool = True) -> dict:
    """Whole-image mIoU on the validation split; metrics JSON, per-class table and figures."""
    report_dir = Path(report_dir)
    device = resolve_device(cfg.device)
    model, _, payload = load_model(final_checkpoint(train_dir, project_dir), device)
    meta = read_meta(data_root)
    if tuple(payload["classes"]) != meta.classes:
        raise ArtifactError(f"The checkpoint's classes {payload['classes']} differ from {data_root}'s; re-run training.")
    loader = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, cfg.eval.max_images)
    n = len(loader.dataset)
    rng = np.random.default_rng([cfg.seed, 40])
    keep = np.sort(rng.choice(n, size=min(cfg.eval.n_examples, n), replace=False))
    t0 = time.perf_counter()
    res = evaluate(model, loader, meta.num_classes, device, keep=keep, progress=progress)
    metrics = summarise(res.confusion, meta.classes)
    metrics["images"] = res.n_images
    if hasattr(model, "prototypes"):
        from .models.prototypes import prototype_counts

        metrics.update(prototype_counts(model))
    write_json(report_dir / "metrics.json", metrics)
    table = per_class_table(metrics)
    write_csv(table, report_dir / "per_class_iou.csv")
    write_csv(pd.DataFrame(res.confusion, index=meta.classes, columns=meta.classes), report_dir / "confusion.csv")
    plots.save_figure(plots.confusion_figure(res.confusion, meta.classes, f"{cfg.method}: confusion matrix (row-normalised, %)"), report_dir / "confusion.png")
    if len(keep):
        ds = PreparedDataset(data_root, "val")
        fig = plots.predictions_figure([ds.image(i) for i in keep], [ds.label(i) for i in keep], [res.examples[i] for i in keep],
                                       meta.classes, titles=[ds.ids[i] for i in keep])
        plots.save_figure(fig, report_dir / "predictions.png")
    return {"metrics": metrics, "table": table, "seconds": time.perf_counter() - t0}


def per_class_table(metrics: dict) -> pd.DataFrame:
    return pd.DataFrame({"IoU %": metrics["iou"]}).rename_axis("class")


# --------------------------------------------------------------------------------------------------------
# 50 interpret


def interpret(cfg: RunConfig, data_root: Path, project_dir: Path, report_dir: Path, progress: bool = True) -> dict:
    """Interpretability metrics (consistency, stability, overlaps, sparsity) and figures of a prototype model,
    from saved artifacts only (never retrains); black-box deeplab has none. Writes `metrics.json` (which
    `dvc metrics show/diff` compare), per-prototype and per-class tables and the figures."""
    from . import interpretability as it
    from .models.prototypes import prototype_names

    report_dir = Path(report_dir)
    info = {"method": cfg.method, "interpretable": cfg.method != "deeplab"}
    if cfg.method == "deeplab":
        info["note"] = ("deeplab is the black-box baseline: no prototypes, so no consistency, stability, sparsity, "
                        "overlap or prototype figures.")
        write_json(report_dir / "metrics.json", info)
        with atomic_path(report_dir / "details" / "README.txt") as tmp:
            tmp.write_text("deeplab has no prototypes: no interpretability tables or figures.\n")
        return info
    device = resolve_device(cfg.device)
    model, _, payload = load_model(Path(project_dir) / "model.pt", device, f"project@{cfg.method}")
    meta = read_meta(data_root)
    val = PreparedDataset(data_root, "val")
    names = prototype_names(model, meta.classes)
    proj = read_json(Path(project_dir) / "projection.json")
    pruned_from = proj.get("prototypes_before") if cfg.method == "protoseg" and "pruned" in proj else None
    t0 = time.perf_counter()
    res = it.evaluate_interpretability(model, val, cfg.data, device, seed=cfg.seed, names=names,
                                       max_images=cfg.eval.max_images, progress=progress, pruned_from=pruned_from)
    info.update(res.metrics)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    if not meta.has_parts:
        from .data.sources import no_parts_note

        info["note"] = no_parts_note(meta.name)
    write_json(report_dir / "metrics.json", info)
    write_csv(res.prototypes, report_dir / "details" / "prototypes.csv")
    write_csv(res.overlap, report_dir / "details" / "overlap.csv")
    _interpret_figures(model, cfg, meta, names, Path(project_dir), report_dir / "details", data_root)
    return info


def _interpret_figures(model, cfg, meta, names, project_dir: Path, report_dir: Path, data_root: Path) -> None:
    """The figures of the interpretability notebook, each saved as a PNG."""
    saved = read_patches(project_dir)
    used = model.group_head.used_prototypes().cpu().numpy() if model.group_head is not None else None
    if saved is not None:
        fig = plots.prototype_gallery(*saved, used=used, group_weights=_group_weight_labels(model),
                                      title=f"{cfg.method}: prototypes by class and scale (source patches)")
        plots.save_figure(fig, report_dir / "gallery.png")
    plots.save_figure(plots.scale_usage_figure(scale_usage(model, meta.classes), title=f"{cfg.method}: share of used prototype weight per scale"),
                      report_dir / "scale_usage.png")
    if model.group_head is not None:
        plots.save_figure(plots.group_composition_figure(*group_composition(model, meta.classes, names)),
                          report_dir / "group_composition.png")
    from . import explain

    device = next(model.parameters()).device
    val = PreparedDataset(data_root, "val")
    plots.save_figure(explain.explain_prediction(model, val, cfg.data, device, cfg.seed, cfg.method), report_dir / "explanation.png")
    plots.save_figure(explain.failure_cases(model, val, cfg.data, device, max_images=cfg.eval.max_images), report_dir / "failure_cases.png")
    if saved is not None:
        fig = explain.nearest_prototypes(model, val, cfg.data, device, cfg.seed, *saved)
        plots.save_figure(fig, report_dir / "nearest_prototypes.png")


def _group_weight_labels(model) -> list[str] | None:
    """Per prototype, 'g<k>:<w>' for each group of its class that uses it (grouped model only)."""
    gh = model.group_head
    if gh is None:
        return None
    w, idx, valid = gh.weight.detach().cpu(), gh.index.cpu(), gh.valid.cpu()
    labels = [""] * model.prototypes.num_prototypes
    for c in range(gh.num_classes):
        for j in range(idx.shape[1]):
            if valid[c, j]:
                labels[int(idx[c, j])] = " ".join(f"g{g}:{float(w[c, g, j]):.2f}" for g in range(gh.groups) if w[c, g, j] > 0)
    return labels


def group_composition(model, classes, names):
    """Per class, the (G, n_c) group-weight matrix with its columns ordered by scale, and the column labels."""
    gh = model.group_head
    w, idx, valid = gh.weight.detach().cpu(), gh.index.cpu(), gh.valid.cpu()
    scale = model.prototypes.proto_scale.cpu()
    mats, cols = [], []
    for c in range(gh.num_classes):
        js = [j for j in range(idx.shape[1]) if valid[c, j]]
        js.sort(key=lambda j: (int(scale[idx[c, j]]), int(idx[c, j])))
        mats.append(w[c][:, js].numpy())
        cols.append(["/".join(names[int(idx[c, j])].split("/")[1:]) for j in js])
    return mats, cols, list(classes)


def scale_usage(model, classes) -> pd.DataFrame:
    """Per class (and overall), the share of used prototype weight from each scale: group weights summed
    over groups for the grouped model; positive own-class last-layer weights otherwise."""
    scale = model.prototypes.proto_scale.cpu()
    cls = model.prototypes.proto_class.cpu()
    S = model.prototypes.num_scales
    gh = model.group_head
    if gh is not None:
        per_proto = torch.zeros(model.prototypes.num_prototypes)
        w = gh.weight.detach().cpu().sum(1)  # (K, n_max)
        per_proto.index_put_((gh.index.cpu()[gh.valid.cpu()],), w[gh.valid.cpu()])
    else:
        per_proto = model.last_layer.detach().cpu()[cls, torch.arange(len(cls))].clamp(min=0)
    table = torch.zeros(len(classes), S)
    table.index_put_((cls, scale), per_proto, accumulate=True)
    share = table / table.sum(1, keepdim=True).clamp(min=1e-12)
    df = pd.DataFrame(100 * share.numpy(), index=list(classes), columns=[f"scale {s}" for s in range(S)])
    total = table.sum(0)
    df.loc["all classes"] = (100 * total / total.sum().clamp(min=1e-12)).numpy()
    return df


# --------------------------------------------------------------------------------------------------------
# 70 export


def export(cfg: RunConfig, data_root: Path, train_dir: Path, project_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Test-set predictions in the evaluation server's format (pascal, cityscapes); a note otherwise."""
    from .export import export_test_predictions

    device = resolve_device(cfg.device)
    model, _, _ = load_model(final_checkpoint(train_dir, project_dir), device)
    return export_test_predictions(model, data_root, cfg.data, cfg.dataset, out_dir, device, progress)


# --------------------------------------------------------------------------------------------------------
# 60 report


# The paper's validation mIoU (docs/method.md §9; mean of 3 runs). The ScaleProtoSeg figures are for the grouped,
# thresholded model; DeepLab-v2's are the published ones (Pascal: with CRF; 76.35 without).
PUBLISHED_MIOU = {
    "cityscapes": {"deeplab": 71.40, "protoseg": 67.54, "scaleprotoseg_groups": 68.97},
    "pascal": {"deeplab": 77.69, "protoseg": 71.98, "scaleprotoseg_groups": 71.80},
    "ade20k": {"deeplab": 34.00, "protoseg": 29.67, "scaleprotoseg_groups": 34.18},
}


def collect_results(methods: list[str], evaluate_dir: Path, train_report_dir: Path, train_dir: Path,
                    project_dir: Path | None = None, dataset: str = "embedded") -> dict:
    """Gather every method's metrics, prototype counts, timings and curves for the final report."""
    rows, iou, curves, notes = [], {}, {}, []
    published = PUBLISHED_MIOU.get(dataset, {})
    for m in methods:
        path = Path(evaluate_dir) / m / "metrics.json"
        if not path.is_file():
            raise ArtifactError(f"{path} not found; run the evaluation stage (`dvc repro evaluate@{m}`).")
        met = read_json(path)
        summ_path = Path(train_dir) / m / "train_summary.json"
        summ = read_json(summ_path) if summ_path.is_file() else {}
        row = {"method": m, "mIoU %": met["miou"]}
        if published:
            row["paper mIoU %"] = published.get(m)
        row.update({
            "pixel acc. %": met["pixel_accuracy"],
            "prototypes": met.get("prototypes", 0),
            "prototypes used": met.get("prototypes_used", met.get("prototypes", 0)),
            "used %": met.get("prototypes_used_%", 100.0 if met.get("prototypes") else None),
            "zero group weights %": met.get("group_weights_zero_%"),
            "non-zero weights / group": met.get("nonzero_per_group"),
            "train steps": summ.get("steps"),
            "train s": summ.get("seconds"),
        })
        interp_path = Path(evaluate_dir).parent / "interpret" / m / "metrics.json"
        interp = read_json(interp_path) if interp_path.is_file() else {}
        for key, col in (("consistency", "consistency %"), ("stability", "stability %"),
                         ("prototype_overlap", "prototype overlap %"), ("group_overlap", "group overlap %")):
            row[col] = interp.get(key)
        if interp.get("note") and interp["note"] not in notes:  # why consistency/stability are empty
            notes.append(interp["note"])
        rows.append(row)
        iou[m] = met["iou"]
        curves[m] = read_curves(Path(train_report_dir) / m / "dvclive")
    table = pd.DataFrame(rows).set_index("method")
    gallery = None
    if project_dir is not None:
        for m in ("scaleprotoseg_groups", "scaleprotoseg", "protoseg"):
            if m in methods and (Path(project_dir) / m / "patches.npz").is_file():
                gallery = (m, Path(project_dir) / m / "patches.npz")
                break
    return {"table": table, "iou": pd.DataFrame(iou), "curves": curves, "gallery": gallery, "notes": notes}


def write_report(results: dict, dataset: str, out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    table = results["table"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, out_dir / "results.csv")
    note = ("\n\nThe paper's numbers (docs/method.md §9) are validation mIoU, mean of 3 runs; its ScaleProtoSeg figure is the "
            "grouped model after thresholding at 0.05; its DeepLab-v2 figure is the published one.\n"
            if "paper mIoU %" in table else
            "\n\nThis dataset is not one of the paper's: no published numbers to compare with.\n")
    with atomic_path(out_dir / "results.md") as tmp:
        notes = results.get("notes") or []  # why cells are empty (no part annotations, a black-box method)
        footnotes = "\n\n" + "\n".join(f"- {n}" for n in notes) if notes else ""
        tmp.write_text(f"# Results on `{dataset}`\n\n{table.to_markdown(floatfmt='.2f')}{footnotes}{note}")
    plots.save_figure(plots.per_class_iou_figure(results["iou"]), out_dir / "per_class_iou.png")
    plots.save_figure(plots.curves_figure(results["curves"]), out_dir / "training_curves.png")
    if results.get("gallery"):
        m, path = results["gallery"]
        fig = plots.prototype_gallery(*read_patches(Path(path).parent), title=f"{m}: prototypes by class and scale")
    else:
        fig = plots.message_figure("No prototype method in experiment.methods: no gallery.")
    plots.save_figure(fig, out_dir / "gallery.png")
    return {"methods": list(table.index), "best": str(table["mIoU %"].idxmax())}


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def read_table_if(path: str | Path):
    """A saved CSV table, or a note that this method has none."""
    if Path(path).is_file():
        return pd.read_csv(path, index_col=0)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show_if(path: str | Path):
    """Display a saved PNG, or say that this method has no such figure."""
    if Path(path).is_file():
        return show(path)
    from IPython.display import Markdown

    return Markdown(f"*No `{Path(path).name}` for this method.*")


def show(path: str | Path):
    """Display a saved PNG in a notebook (figures are drawn from saved artifacts)."""
    from IPython.display import Image

    return Image(filename=str(path))


def model_summary(cfg: RunConfig, data_root: Path) -> pd.DataFrame:
    """Parameter counts of the method's model per parameter group (built without downloading weights)."""
    meta = read_meta(data_root)
    model = build_for(cfg, meta.num_classes, offline=True)
    rows = {g: sum(p.numel() for p in ps) for g, ps in model.param_groups().items()}
    rows["total (incl. frozen)"] = sum(p.numel() for p in model.parameters())
    return pd.DataFrame({"parameters": rows})
