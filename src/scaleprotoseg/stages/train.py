"""Stage 20, train (and ScaleProtoSeg's groups stage): one entry point, `train`, runs the method's phases —
DeepLab's single phase, ProtoSeg / ScaleProtoSeg's warm-up and joint, the groups' warm-up and joint from
scaleprotoseg's projected model. Each phase ends with a checkpoint the next one starts from; an
interrupted phase resumes from its resume state; curves go to DVCLive."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ..artifacts import copy_projection_records
from ..atomic import read_json, write_json
from ..config import LAUNCH_KEYS, RunConfig
from ..data.loader import eval_loader, val_subset
from ..data.prepared import read_meta
from ..device import resolve_device, resolve_precision
from ..errors import ArtifactError
from ..models.build import build_for, load_model
from ..models.checkpoint import save_checkpoint
from ..training import distributed
from ..training.live import LiveLogger
from ..training.phases import METHOD_PHASES, phase_steps
from ..training.runner import run_phases
from . import launch
from .seeding import seed_everything


def train(cfg: RunConfig, data_root: Path, out_dir: Path, report_dir: Path, progress: bool = True,
          interrupt_at: int | None = None, start_checkpoint: Path | None = None) -> dict:
    """Train `cfg.method` through its phases; write `out_dir/model.pt` (the last phase's end state), one
    checkpoint per phase, `train_summary.json`, and curves under `report_dir/dvclive`.

    scaleprotoseg_groups starts from `start_checkpoint` (scaleprotoseg's projected model). With
    experiment.gpus × experiment.nodes > 1 it runs itself under torchrun (`launch`) and waits."""
    out_dir, report_dir = Path(out_dir), Path(report_dir)
    if getattr(cfg.train, "released", None):
        return import_released_model(cfg, read_meta(data_root), out_dir, report_dir, start_checkpoint)
    if launch.wanted(cfg):
        launch.run("train", cfg, {"data": data_root, "out": out_dir, "report": report_dir, "start-from": start_checkpoint}, progress)
        return read_json(out_dir / "train_summary.json")
    meta = read_meta(data_root)
    device = resolve_device(cfg.device)
    world = distributed.init(device)
    device = distributed.rank_device(device, world)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick the fastest convolutions
    seed_everything(cfg.seed)
    model = _start_model(cfg, start_checkpoint, device, out_dir, meta.classes) if cfg.start is not None else build_for(cfg, meta.num_classes)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        if world.size > 1 and not (cfg.start or cfg).model.freeze_bn:  # BatchNorm that learns: whole-batch statistics
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    phases = METHOD_PHASES[cfg.method]
    val = eval_loader(data_root, "val", cfg.data, cfg.eval.batch_size, num_workers=cfg.runtime.num_workers,
                      indices=_my_share(val_subset(len(meta.splits["val"]), cfg.runtime.val_images, cfg.seed), world))
    # Curves start afresh each run: finished phases and a resumed phase replay their stored histories, so a
    # resume has no gap (what DVC removed) and no repeat (steps logged after the last resume state).
    logger = LiveLogger(report_dir / "dvclive", params=cfg.to_dict()) if world.main else None
    after_update = model.group_head.project if getattr(model, "group_head", None) is not None else None
    try:
        done = run_phases(model, cfg, phases, data_root, out_dir, logger, device, progress, interrupt_at, meta,
                          after_update=after_update, val=val)
    except BaseException:
        if logger is not None:
            logger.abort()
        raise
    steps = sum(phase_steps(cfg, ph) for ph in phases)
    if not world.main:
        distributed.barrier()  # rank 0 writes the outputs
        return {}
    logger.end()
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase=phases[-1], step=steps, classes=list(meta.classes))
    summary = _train_summary(cfg, out_dir, model, device, done, steps, world.size)
    distributed.barrier()
    return summary


def _my_share(indices, world):
    """This process's block of the validation images (the runner sums the confusion matrices)."""
    return [indices[i] for i in distributed.shard(len(indices), world)]


def _start_model(cfg: RunConfig, start_checkpoint: Path | None, device, out_dir: Path, classes=None):
    """The model a method starts from when it is not the backbone's initialisation: scaleprotoseg_groups
    starts from scaleprotoseg's projected model, which must have been made with today's scaleprotoseg settings."""
    if start_checkpoint is None or not Path(start_checkpoint).is_file():
        raise ArtifactError(f"{start_checkpoint}: {cfg.method} starts from the projected {cfg.start.method} model; "
                            f"run `dvc repro project@{cfg.start.method}` first.")
    model, start_cfg, _ = load_model(start_checkpoint, device, f"project@{cfg.start.method}", cfg.start, classes)
    if _computed(start_cfg) != _computed(cfg.start):
        raise ArtifactError(f"{start_checkpoint} was trained with other {cfg.start.method} settings than params.yaml now has; "
                            f"re-run `dvc repro project@{cfg.start.method}`.")
    model.add_groups(cfg.train.groups)
    if distributed.current().main:
        copy_projection_records(Path(start_checkpoint).parent, out_dir)  # provenance and patches travel with the model
    return model


def _computed(cfg: RunConfig) -> dict:
    """A configuration without its run-time knobs: what a model's weights depend on."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("runtime", *LAUNCH_KEYS)}


def _train_summary(cfg, out_dir, model, device, phases, steps, processes: int = 1) -> dict:
    summary = {
        "method": cfg.method,
        "steps": steps,
        "phases": phases,
        "seconds": round(sum(p["seconds"] for p in phases), 2),
        "device": str(device),
        "processes": processes,
        "precision": resolve_precision(cfg.precision, device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json(Path(out_dir) / "train_summary.json", summary)
    return summary


def model_summary(cfg: RunConfig, data_root: Path) -> pd.DataFrame:
    """Parameter counts of the method's model per parameter group (built without downloading weights)."""
    meta = read_meta(data_root)
    model = build_for(cfg, meta.num_classes, offline=True)
    rows = {g: sum(p.numel() for p in ps) for g, ps in model.param_groups().items()}
    rows["total (incl. frozen)"] = sum(p.numel() for p in model.parameters())
    return pd.DataFrame({"parameters": rows})


def import_released_model(cfg: RunConfig, meta, out_dir: Path, report_dir: Path,
                          start_checkpoint: Path | None = None) -> dict:
    """`presets.<dataset>.<method>.released`: the authors' checkpoint, read safely and mapped onto our model
    (`scaleprotoseg.import_official`), is this stage's model; nothing trains. Its DVCLive folder holds the
    params and no curves. A released grouped model takes the projection records (source patches, provenance)
    of the stage-1 model it would have started from when that model has the very same prototypes (both
    released)."""
    from ..import_official import import_released
    from ..paths import repo_root

    src = Path(cfg.train.released)
    src = src if src.is_absolute() else repo_root() / src
    if not src.is_file():
        raise ArtifactError(f"presets.{cfg.dataset}.{cfg.method}.released is {cfg.train.released!r}, but {src} is not a "
                            "file: download the authors' checkpoint there (README, 'Reproducing the paper from the "
                            "released checkpoints') or set it back to null to train.")
    info = import_released(src, out_dir / "model.pt", cfg, list(meta.classes))
    if start_checkpoint is not None and Path(start_checkpoint).is_file():
        mine = load_model(out_dir / "model.pt")[0].prototypes.vectors
        theirs = load_model(start_checkpoint)[0].prototypes.vectors
        if mine.shape == theirs.shape and torch.equal(mine, theirs):
            copy_projection_records(Path(start_checkpoint).parent, out_dir)
    logger = LiveLogger(report_dir / "dvclive", params=cfg.to_dict())
    logger.end()
    (report_dir / "dvclive" / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
    if not (report_dir / "dvclive" / "metrics.json").is_file():
        write_json(report_dir / "dvclive" / "metrics.json", {})
    summary = {"method": cfg.method, "steps": 0, "phases": [], "seconds": 0.0, "released": cfg.train.released,
               **{k: v for k, v in info.items() if k != "mapping"}}
    write_json(out_dir / "train_summary.json", summary)
    print(f"[{cfg.method}] imported the released checkpoint {src.name} ({info['format']}): "
          f"{info.get('prototypes')} prototypes; nothing trained")
    return summary


def _launched(cfg: RunConfig, a) -> None:
    """One of the processes `launch.run` starts under torchrun."""
    train(cfg, Path(a.data), Path(a.out), Path(a.report), progress=not a.no_progress,
          start_checkpoint=None if a.start_from is None else Path(a.start_from))


if __name__ == "__main__":  # `python -m scaleprotoseg.stages.train --config …`: one process under torchrun
    launch.child(_launched)
