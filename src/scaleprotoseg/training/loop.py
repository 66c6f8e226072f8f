"""The step loop shared by every training phase: accumulation, poly LR, logging, resumable checkpoints.

One phase = one optimiser over chosen parameter groups for a number of mini-batches. An optimiser update
happens every `accumulation` mini-batches; the poly schedule lr_t = lr₀·(1 − t/T)^p runs over updates
(T = steps // accumulation), as in the paper's joint phases (p = 0 gives a constant LR). Losses are summed
on the device and read back only every `log_every` steps, so there is no host synchronisation per step.

Resume: every `checkpoint_every` mini-batches (at an update boundary) the model, optimiser state and step
are written atomically to `resume_path`, tagged with a fingerprint of the configuration. A later call with
the same fingerprint continues from that step with exactly the batches it would have seen (the loader is
a pure function of the step); a different fingerprint starts afresh.

Precision: the loss runs under `autocast(device, precision)` (the prototype head and losses keep float32
themselves); fp16 adds gradient scaling. Several processes (torchrun): the step runs through
DistributedDataParallel over `LossStep` (re-wrapped per phase, since a phase decides what trains), with the
losses' means over the whole sharded batch (`losses.sharded_batch`) and no gradient all-reduce on the
accumulation steps that do not end an update. See docs/method.md §11.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import clean_stale
from ..device import autocast
from ..errors import ConfigError, DivergenceError
from ..losses import sharded_batch
from ..models.checkpoint import check_finite, write_torch
from ..progress import tqdm
from . import distributed


def make_optimizer(name: str, groups: list[dict], weight_decay: float = 0.0, momentum: float = 0.9):
    """Adam (the paper's prototype phases) or SGD with momentum (DeepLab's recipe); groups carry their lr."""
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("weight_decay", weight_decay)
        g["initial_lr"] = g["lr"]
    if name == "adam":
        return torch.optim.Adam(groups)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum)
    raise ConfigError(f"optimizer {name!r} is not one of ['adam', 'sgd'].")


def poly_factor(update: int, total_updates: int, power: float) -> float:
    if power == 0 or total_updates <= 0:
        return 1.0
    return max(1.0 - update / total_updates, 0.0) ** power


class LossStep(nn.Module):
    """`loss_fn(model, images, labels, classes)` as a module, so that DistributedDataParallel sees every
    parameter the loss uses (the group phases call the head directly, not `model.forward`)."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, images, labels, classes=None):
        return self.loss_fn(self.model, images, labels, classes)


@dataclass
class PhaseResult:
    phase: str
    steps: int
    resumed_from: int
    seconds: float
    last_loss: float


def _to_device(batch, device: torch.device, channels_last: bool):
    """(images, int64 labels, classes or None) on `device`; loaders may yield (images, labels) only."""
    images, labels, *rest = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device, non_blocking=True).long()
    classes = rest[0].to(device, non_blocking=True) if rest else None
    return images, labels, classes


def run_phase(
    model: nn.Module,
    *,
    phase: str,
    steps: int,
    accumulation: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    make_loader: Callable[[int], torch.utils.data.DataLoader],
    device: torch.device,
    resume_path: str | Path | None = None,
    fingerprint: str = "",
    poly_power: float = 0.0,
    log_every: int = 10,
    checkpoint_every: int = 100,
    logger: Callable[[int, dict], None] | None = None,
    validate: Callable[[int], dict] | None = None,
    val_every: int = 0,
    after_update: Callable[[], None] | None = None,
    interrupt_at: int | None = None,
    progress: bool = True,
    precision: str = "fp32",
    lr_keys: tuple[str, ...] = (),
    history: list | None = None,
    replay: Callable[[list], None] | None = None,
) -> PhaseResult:
    """Train `model` for `steps` mini-batches; `loss_fn(model, images, labels, classes=None)` returns a scalar.

    Under torchrun (a process group of several processes) the model is wrapped in DistributedDataParallel
    for this phase and each process sees its shard of every step's batch (the loader's business); the
    logged loss is the whole batch's, and only rank 0 writes the resume state and logs."""
    world = distributed.current()
    start = 0
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = _read_resume(resume_path, phase)
    if state is not None:
        if state.get("fingerprint") == fingerprint and state.get("phase") == phase:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start = int(state["step"])
            print(f"[{phase}] resuming from step {start} ({resume_path})")
            if history is not None:  # the curves up to the resume point belong to the resume state
                history[:] = state.get("history", [])
                if replay is not None:
                    replay(history)
        else:
            print(f"[{phase}] ignoring {resume_path}: it belongs to another configuration or phase")
    total_updates = max(steps // accumulation, 1)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    good = start  # the last step known to be finite
    n_logged, last_loss = 0, float("nan")
    model.train()
    step_module = LossStep(model, loss_fn)
    if world.size > 1:
        step_module = distributed.wrap(step_module, device)
    channels_last = device.type == "cuda"
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=steps, initial=start, desc=phase, disable=not (progress and world.main), dynamic_ncols=True)
    step = start
    for batch in make_loader(start):
        if interrupt_at is not None and step == interrupt_at:
            bar.close()
            raise KeyboardInterrupt(f"simulated interruption at step {step}")
        images, labels, classes = _to_device(batch, device, channels_last)
        ends_update = (step + 1) % accumulation == 0
        sync = nullcontext() if ends_update or world.size == 1 else step_module.no_sync()
        with sync, sharded_batch(world.size):
            with autocast(device, precision):
                loss = step_module(images, labels, classes)
            scaler.scale(loss / accumulation).backward()
        loss_sum += loss.detach()
        finite &= torch.isfinite(loss.detach())  # read with the logged loss: no host sync per step
        n_logged += 1
        step += 1
        if ends_update:
            update = step // accumulation
            factor = poly_factor(update - 1, total_updates, poly_power)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            if precision != "fp16":  # fp16: the gradient scaler skips non-finite steps by design
                finite &= grads_finite(optimizer)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if after_update is not None:
                after_update()
        if step % log_every == 0 or step == steps:
            total, bad = distributed.all_sum(torch.stack([loss_sum, (~finite).float()])).tolist()
            _check(bad == 0, phase, good, step, lr_keys, resume_path)
            good = step
            last_loss = total / (n_logged * world.size)
            loss_sum.zero_()
            n_logged = 0
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if logger is not None and world.main:
                logger(step, {f"{phase}/loss": last_loss, f"{phase}/lr": optimizer.param_groups[0]["lr"]})
        if validate is not None and val_every and step % val_every == 0 and step < steps:
            metrics = validate(step)
            model.train()
            if logger is not None and world.main:
                logger(step, metrics)
        if ends_update and resume_path is not None and step % checkpoint_every < accumulation and step < steps:
            bad = distributed.all_sum((~finite).float()).item()  # every process decides alike
            _check(bad == 0, phase, good, step, lr_keys, resume_path)
            if world.main:  # after this step's logs, which belong to the state
                _save_resume(resume_path, model, optimizer, step, phase, fingerprint, history, scaler)
            good = step
        bar.update(1)
    bar.close()
    if validate is not None:
        metrics = validate(step)
        if logger is not None and world.main:
            logger(step, metrics)
    return PhaseResult(phase, steps, start, time.perf_counter() - t0, last_loss)


def _read_resume(path, phase: str) -> dict | None:
    """The resume state at `path`, or None (absent, or unreadable: then said, and the phase starts afresh)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("not a resume state")
        return state
    except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: any unpickling error)
        print(f"[{phase}] ignoring {path}: it is not a readable resume state ({type(exc).__name__}: {exc}); "
              "the phase starts from its beginning and overwrites it")
        return None


def grads_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """A device bool: every gradient of the optimiser's parameters is finite (one fused norm per tensor)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()


def _check(ok: bool, phase: str, good: int, step: int, lr_keys, resume_path) -> None:
    if ok:
        return
    keep = f"the last resume state ({resume_path}) and finished phases are kept" if resume_path else "earlier checkpoints are kept"
    lower = ", ".join(lr_keys) if lr_keys else "the learning rates of this phase"
    raise DivergenceError(
        f"[{phase}] training diverged: the loss or a gradient became non-finite (inf/NaN) between step {good} and "
        f"step {step}. Nothing non-finite was written; {keep}. Lower {lower} (or check the data) and run again.")


def _save_resume(path, model, optimizer, step, phase, fingerprint, history=None, scaler=None) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "phase": phase,
        "fingerprint": fingerprint,
        "history": list(history or []),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},  # fp16's loss scale  # [step, {metric: value}] logged so far: curves resume without gaps or repeats
    }
    check_finite(state["model"], path)
    write_torch(state, path)


def clear_resume(path: str | Path | None) -> None:
    """Remove a finished phase's resume state, and any temporary a killed write of it left."""
    if path is not None and distributed.current().main:
        Path(path).unlink(missing_ok=True)
        clean_stale(Path(path))
