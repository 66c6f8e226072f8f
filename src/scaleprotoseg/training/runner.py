"""Running a sequence of training phases: one optimiser per phase over the parameters `phases.phase_spec`
chooses, each phase ending with a checkpoint that the next one starts from, a finished phase skipped when
its checkpoint belongs to this configuration, an interrupted one resumed (`loop.run_phase`)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..data.loader import train_loader
from ..evaluation import evaluate
from ..metrics.segmentation import iou_from_confusion
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import clear_resume, make_optimizer, run_phase
from .phases import loss_for, phase_spec, trunk_frozen


def bn_frozen(cfg: RunConfig) -> bool:
    """BatchNorm frozen to its initial statistics by the preset (the paper's, everywhere but EM)."""
    return (cfg.start or cfg).model.freeze_bn


def _phase_checkpoint(path: Path, fingerprint: str):
    """A finished phase's checkpoint, if it belongs to this configuration (an interrupted run skips it)."""
    if path.is_file():
        payload = load_checkpoint(path)
        if payload.get("fingerprint") == fingerprint:
            return payload
    return None


def run_phases(model, cfg: RunConfig, phases, data_root: Path, out_dir: Path, logger, device,
               progress: bool, interrupt_at: int | None, meta, step_offset: int = 0, after_update=None,
               val=None) -> list[dict]:
    """Run `phases` in order; each ends with `out_dir/<phase>.pt`, which the next one starts from."""
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
        model.bn_eval = bn_frozen(cfg) or trunk_frozen(phase)
        optimizer = make_optimizer(spec.optimizer, spec.groups, momentum=spec.momentum)
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
            loss_fn=loss_for(t, phase),
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
    model.bn_eval = bn_frozen(cfg)
    return done
