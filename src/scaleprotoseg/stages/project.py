"""Stage 30, project: ProtoSeg / ScaleProtoSeg's projection ("push"), de-duplication, last-layer
fine-tuning and ProtoSeg's pruning (docs/method.md §5); for scaleprotoseg_groups, the thresholding of the
group weights. DeepLab has no prototypes: the stage records that."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..artifacts import copy_projection_records
from ..atomic import atomic_dir, atomic_path, read_json, write_csv, write_json
from ..config import RunConfig
from ..data.loader import eval_loader
from ..data.prepared import PreparedDataset, read_meta
from ..device import resolve_device
from ..errors import ArtifactError, ConfigError, StageError
from ..models.build import load_model
from ..models.checkpoint import save_checkpoint
from ..training import distributed
from ..training.live import LiveLogger
from . import launch
from .seeding import seed_everything


def project(cfg: RunConfig, data_root: Path, train_dir: Path, out_dir: Path, progress: bool = True,
            report_dir: Path | None = None) -> dict:
    """Projection stage: push + de-duplication + last-layer fine-tuning (+ ProtoSeg pruning); thresholding for
    the grouped model. DeepLab has no prototypes: it records that and evaluation uses its trained model.
    The fine-tuning curves go to DVCLive in `report_dir/dvclive` (an empty plots folder when nothing is
    fine-tuned)."""
    train_dir, out_dir = Path(train_dir), Path(out_dir)
    if not (train_dir / "model.pt").is_file():
        raise ArtifactError(f"{train_dir / 'model.pt'} not found; run the training stage first (`dvc repro train@{cfg.method}`).")
    if cfg.method == "deeplab":
        info = {"method": cfg.method, "prototypes": 0, "projected": False,
                "note": "deeplab is the black-box baseline: it has no prototypes to project; evaluation uses the trained model."}
    elif cfg.method == "scaleprotoseg_groups":
        info = threshold_groups(cfg, train_dir, out_dir)
    elif launch.wanted(cfg):  # experiment.gpus × nodes > 1: the pass and the fine-tuning under torchrun
        launch.run("project", cfg, {"data": data_root, "train": train_dir, "out": out_dir, "report": report_dir}, progress)
        return read_json(out_dir / "projection.json")
    else:
        info = project_prototypes(cfg, data_root, train_dir, out_dir, progress, report_dir)
        if not distributed.current().main:
            return info
    if report_dir is not None and not info.get("phases"):  # nothing fine-tuned: the declared plots folder, empty
        _no_curves(Path(report_dir) / "dvclive", cfg)
    write_json(out_dir / "projection.json", info)
    return info


def _no_curves(directory: Path, cfg: RunConfig) -> None:
    from ..stage_metrics import flat_params

    with atomic_dir(directory) as tmp:
        (tmp / "plots").mkdir()
        write_json(tmp / "params.json", flat_params(cfg.to_dict()))


def check_pruning(cfg: RunConfig, n_images: int, split: str) -> None:
    """ProtoSeg's pruning ranks one patch per image: it needs at least `prune_k` images (checked before any work)."""
    p = cfg.project
    if cfg.method == "protoseg" and getattr(p, "prune", False) and n_images < p.prune_k:
        raise ConfigError(f"project_protoseg.prune_k is {p.prune_k}, but pruning compares each prototype with its "
                          f"{p.prune_k} nearest patches, one per image, and the {split!r} split has {n_images} image(s): "
                          "lower presets.<dataset>.project_protoseg.prune_k (and prune_threshold), or set prune: false.")


def projection_split(meta) -> str:
    return "project" if "project" in meta.splits else "train"


def project_prototypes(cfg: RunConfig, data_root: Path, train_dir: Path, out_dir: Path, progress: bool = True,
                       report_dir: Path | None = None) -> dict:
    from .. import projection as pj
    from ..models.prototypes import prototype_names

    device = resolve_device(cfg.device)
    world = distributed.init(device)
    device = distributed.rank_device(device, world)
    seed_everything(cfg.seed)
    meta = read_meta(data_root)
    model, _, payload = load_model(train_dir / "model.pt", device, f"train@{cfg.method}", cfg, meta.classes)
    split = projection_split(meta)
    source = PreparedDataset(data_root, split)
    check_pruning(cfg, len(source), split)
    loader = eval_loader(data_root, split, cfg.data, 1, num_workers=cfg.runtime.num_workers)
    names = prototype_names(model, meta.classes)
    t0 = time.perf_counter()
    mine = loader if world.size == 1 else eval_loader(data_root, split, cfg.data, 1, num_workers=cfg.runtime.num_workers,
                                                       indices=distributed.shard(len(source), world))
    proj = reduce_projection(pj.find_nearest(model, mine, device, progress and world.main, rule=cfg.project.rule))
    seconds_pass = time.perf_counter() - t0
    released = getattr(cfg.train, "released", None)
    if not released:  # a released model was projected by its authors: it keeps its vectors and last layer
        with torch.no_grad():
            model.prototypes.vectors.copy_(proj.vectors)
    missing = [n for n, f in zip(names, proj.found.tolist()) if not f]
    table = pj.provenance_table(proj, names, model, source.ids, meta.classes)
    patches, boxes = pj.source_patches(proj, source)
    keep = (torch.arange(len(names), device=model.prototypes.vectors.device) if released else
            pj.duplicates(model.prototypes.vectors.detach(), model.prototypes.proto_scale))
    kept_names = [names[i] for i in keep.tolist()]
    table["kept"] = [n in set(kept_names) for n in table.index]
    model.keep_prototypes(keep)
    ids = keep.cpu().numpy()
    info = {"method": cfg.method, "split": split, "images": len(source), "prototypes_before": len(names),
            "duplicates_removed": len(names) - len(ids), "no_eligible_pixel": missing,
            "projection_pass_seconds": round(seconds_pass, 2)}
    save = save_checkpoint if world.main else (lambda *a, **k: None)  # rank 0 writes
    save(out_dir / "projected.pt", model, cfg.to_dict(), phase="projected", step=0, classes=list(meta.classes))
    if released:
        info["released"] = released
        info["note"] = ("released model: its prototypes and last layer are kept as released (no projection onto this "
                        "data, no fine-tuning, no pruning); the pass only finds each prototype's nearest patch here.")
    # nothing is fine-tuned for a released model: `project` writes its (empty) curves folder
    logger = (LiveLogger(Path(report_dir) / "dvclive", params=cfg.to_dict())
              if report_dir is not None and world.main and not released else None)
    try:
        phases = [] if released else _finetune(model, cfg, data_root, out_dir, logger, device, progress, meta, table, kept_names, loader, info)
    except BaseException:
        if logger is not None:
            logger.abort()
        raise
    if logger is not None:
        logger.end()
    ids = ids if "kept_after_pruning" not in info else ids[info.pop("kept_after_pruning")]
    info["prototypes"] = model.prototypes.num_prototypes
    info["phases"] = phases
    if not world.main:
        distributed.barrier()
        return info
    write_csv(table, out_dir / "provenance.csv")
    with atomic_path(out_dir / "patches.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, patches=patches[ids], boxes=boxes[ids], names=np.array([names[i] for i in ids]))
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="final", step=0, classes=list(meta.classes))
    distributed.barrier()
    return info


def _finetune(model, cfg, data_root, out_dir, logger, device, progress, meta, table, kept_names, loader, info):
    """Last-layer fine-tuning; ProtoSeg then prunes and fine-tunes again (its curves continue on the same axis)."""
    from .. import projection as pj
    from ..training.runner import run_phases

    save = save_checkpoint if distributed.current().main else (lambda *a, **k: None)
    phases = run_phases(model, cfg, ("finetune",), data_root, out_dir, logger, device, progress, None, meta)
    if cfg.method == "protoseg" and cfg.project.prune:
        best_d, best_m = pj.nearest_patches(model, loader, device, cfg.project.prune_k, progress)
        keep_mask = pj.prune_mask(best_d, best_m, cfg.project.prune_threshold)
        if not bool(keep_mask.any()):
            raise StageError(f"ProtoSeg's pruning would remove every prototype: none has {cfg.project.prune_threshold} "
                             f"(project_protoseg.prune_threshold) of its {cfg.project.prune_k} nearest patches in its own "
                             "class. The model is far from trained (more training steps), or set project_protoseg.prune: false.")
        pruned = [kept_names[i] for i in torch.nonzero(~keep_mask).flatten().tolist()]
        table["pruned"] = [n in set(pruned) for n in table.index]
        keep2 = torch.nonzero(keep_mask).flatten()
        info["kept_after_pruning"] = keep2.cpu().numpy()
        model.keep_prototypes(keep2)
        info["pruned"] = pruned
        save(out_dir / "pruned.pt", model, cfg.to_dict(), phase="pruned", step=0, classes=list(meta.classes))
        offset = sum(p["steps"] for p in phases)
        phases += run_phases(model, cfg, ("finetune",), data_root, out_dir / "after_pruning", _renamed(logger, "finetune_after_pruning"),
                             device, progress, None, meta, step_offset=offset)
    return phases


def _renamed(logger, phase: str):
    """The logger with the second fine-tuning's curves under their own name (`finetune_after_pruning/loss`)."""
    if logger is None:
        return None
    return lambda step, metrics: logger(step, {k.replace("finetune/", f"{phase}/", 1): v for k, v in metrics.items()})


def reduce_projection(proj):
    """Across processes that each searched their block of the split: per prototype the overall nearest
    (ties to the earliest image, as one process would keep), every field taken from the process that found it."""
    if distributed.current().size == 1:
        return proj
    mine = distributed.winner_rows(proj.distance)
    for name in ("vectors", "distance", "image", "position", "feature_size", "box"):
        setattr(proj, name, distributed.gather_rows(getattr(proj, name), mine))
    return proj


def threshold_groups(cfg: RunConfig, train_dir: Path, out_dir: Path) -> dict:
    """The grouped model is evaluated after zeroing group weights below the threshold (no renormalisation)."""
    from ..models.prototypes import prototype_counts

    model, _, payload = load_model(train_dir / "model.pt", "cpu", f"groups@{cfg.method}", cfg)
    before = prototype_counts(model)
    model.group_head.threshold(cfg.project.threshold)
    after = prototype_counts(model)
    copy_projection_records(train_dir, out_dir)
    write_json(out_dir / "used_prototypes.json", {"used": model.group_head.used_prototypes().cpu().tolist()})
    save_checkpoint(out_dir / "model.pt", model, cfg.to_dict(), phase="thresholded", step=0, classes=payload["classes"])
    return {"method": cfg.method, "threshold": cfg.project.threshold, "before_threshold": before, **after}


def _launched(cfg: RunConfig, a) -> None:
    """One of the processes `launch.run` starts under torchrun."""
    project(cfg, Path(a.data), Path(a.train), Path(a.out), progress=not a.no_progress,
            report_dir=None if a.report is None else Path(a.report))


if __name__ == "__main__":  # `python -m scaleprotoseg.stages.project --config …`: one process under torchrun
    launch.child(_launched)
