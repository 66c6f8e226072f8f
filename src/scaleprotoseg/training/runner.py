"""Running a sequence of training phases: one optimiser per phase over the parameters `phases.phase_spec`
chooses, each phase ending with a checkpoint that the next one starts from, a finished phase skipped when
its checkpoint belongs to this configuration, an interrupted one resumed (`loop.run_phase`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..closure import code_version
from ..config import RunConfig
from ..data.loader import TrainStream
from ..device import resolve_precision
from ..errors import ArtifactError
from ..evaluation import evaluate
from ..metrics.segmentation import iou_from_confusion
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..progress import phase_line
from . import distributed
from .loop import clear_resume, make_optimizer, run_phase
from .phases import TRAINS, loss_for, lr_keys, phase_spec, trunk_frozen


def bn_frozen(cfg: RunConfig) -> bool:
    """BatchNorm frozen to its initial statistics by the preset (the paper's, everywhere but EM)."""
    return (cfg.start or cfg).model.freeze_bn


# What a phase computes from: these config sections and the code of the stage that runs it. `runtime`
# (logging, checkpoint and validation intervals, workers) is never part of it.
TRAINING = ("dataset", "method", "seed", "data", "model", "train", "start")
PHASE_IDENTITY = {phase: (TRAINING, "scaleprotoseg.stages.train") for phase in TRAINS if phase != "finetune"}
PHASE_IDENTITY["finetune"] = (TRAINING + ("project",), "scaleprotoseg.stages.project")


def phase_identity(cfg: RunConfig, phase: str, precision: str = "fp32") -> dict[str, str]:
    """Per config section and for the code, a short hash: what a phase checkpoint must match to be reused.
    `precision` is the resolved one (`auto` trains fp32 on a CPU and bf16 on a GPU: not the same numbers)."""
    sections, module = PHASE_IDENTITY[phase]
    parts = {s: cfg.fingerprint((s,), "") for s in sections}
    parts["code"] = code_version(module)
    if precision != "fp32":  # fp32 adds nothing, so checkpoints of full-precision runs keep their identity
        parts["precision"] = precision
    return parts


def _finished_phase(path: Path, identity: dict[str, str], phase: str):
    """A finished phase's checkpoint if it belongs to this run; if not, say why it is discarded."""
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path)
    except ArtifactError as exc:
        print(f"[{phase}] discarding {path}: {exc} The phase runs again.")
        return None
    stored = payload.get("identity") or {}
    changed = sorted(k for k in identity if stored.get(k) != identity[k])
    if not changed:
        return payload
    what = ", ".join("the code it runs" if k == "code" else f"`{k}`" for k in changed)
    print(f"[{phase}] discarding {path}: it was computed with other {what} than this run has; the phase runs again")
    return None


def run_phases(model, cfg: RunConfig, phases, data_root: Path, out_dir: Path, logger, device,
               progress: bool, interrupt_at: int | None, meta, step_offset: int = 0, after_update=None,
               val=None) -> list[dict]:
    """Run `phases` in order; each ends with `out_dir/<phase>.pt`, which the next one starts from."""
    t, rt = cfg.train, cfg.runtime
    world = distributed.current()
    precision = resolve_precision(cfg.precision, device)
    stream = None  # one loader for every phase: its workers persist across phases
    done = []
    offset = step_offset
    for k, phase in enumerate(phases):
        spec = phase_spec(model, phase, cfg)
        if spec.steps == 0:
            continue
        identity = phase_identity(cfg, phase, precision)
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        ckpt = out_dir / f"{phase}.pt"
        finished = _finished_phase(ckpt, identity, phase)
        if finished is not None:
            model.load_state_dict(finished["state_dict"])
            print(f"[{phase}] already finished ({ckpt}); continuing from it")
            clear_resume(out_dir / f"resume_{phase}.pt")  # a kill between the phase's save and this removal
            for step, metrics in finished.get("history", []):  # its curves, for this run's logs
                if logger is not None:
                    logger(int(step), metrics)
            done.append({"phase": phase, "steps": spec.steps, "seconds": finished.get("seconds", 0.0), "resumed": "finished"})
            offset += spec.steps
            continue
        model.bn_eval = bn_frozen(cfg) or trunk_frozen(phase)
        if stream is None:
            stream = TrainStream(data_root, "train", cfg.data, t.batch_size, rt.num_workers,
                                 pin_memory=device.type == "cuda", rank=world.rank, world=world.size)
        optimizer = make_optimizer(spec.optimizer, spec.groups, momentum=spec.momentum)
        history: list = []

        def log(step, metrics, offset=offset, history=history):
            history.append([offset + step, {k: float(v) for k, v in metrics.items()}])
            if logger is not None:
                logger(offset + step, metrics)

        def validate(step):
            res = evaluate(model, val, meta.num_classes, device, progress=False)  # this process's share
            confusion = distributed.all_sum(torch.as_tensor(res.confusion, device=device)).cpu().numpy()
            return {"val/miou": iou_from_confusion(confusion)[1]}

        with phase_line(f"{cfg.method}-{cfg.seed}", phase, spec.steps, enabled=world.main):
            result = run_phase(
                model, phase=phase, steps=spec.steps, accumulation=t.accumulation, optimizer=optimizer,
                loss_fn=loss_for(t, phase),
                make_loader=lambda start, k=k, stream=stream, steps=spec.steps: stream(steps, cfg.seed + k, start),
                device=device, resume_path=out_dir / f"resume_{phase}.pt", fingerprint=fingerprint,
                poly_power=spec.poly_power, log_every=rt.log_every, checkpoint_every=rt.checkpoint_every, logger=log,
                validate=validate if val is not None else None, val_every=rt.val_every,
                after_update=after_update, interrupt_at=None if interrupt_at is None else interrupt_at - offset,
                progress=progress, precision=precision, lr_keys=lr_keys(cfg, phase), history=history,
                replay=None if logger is None else (lambda entries: [logger(int(s), m) for s, m in entries]),
                )
        if world.main:
            save_checkpoint(ckpt, model, cfg.to_dict(), phase=phase, step=spec.steps, classes=list(meta.classes),
                            fingerprint=fingerprint, identity=identity, seconds=result.seconds, history=history)
        distributed.barrier()
        clear_resume(out_dir / f"resume_{phase}.pt")
        done.append({"phase": phase, "steps": spec.steps, "seconds": round(result.seconds, 2), "resumed": result.resumed_from,
                     "last_loss": result.last_loss})
        offset += spec.steps
    model.bn_eval = bn_frozen(cfg)
    return done

