"""The step loop shared by every training phase: accumulation, poly LR, logging, resumable checkpoints.

One phase = one optimiser over chosen parameter groups for a number of mini-batches. An optimiser update
happens every `accumulation` mini-batches; the poly schedule lr_t = lr₀·(1 − t/T)^p runs over updates
(T = steps // accumulation), as in the paper's joint phases (p = 0 gives a constant LR). Losses are summed
on the device and read back only every `log_every` steps, so there is no host synchronisation per step.

Resume: every `checkpoint_every` mini-batches (at an update boundary) the model, optimiser state and step
are written atomically to `resume_path`, tagged with a fingerprint of the configuration. A later call with
the same fingerprint continues from that step with exactly the batches it would have seen (the loader is
a pure function of the step); a different fingerprint starts afresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..io import atomic_path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("experiment.device is 'cuda' but no CUDA device is available; set it to auto or cpu.")
    return torch.device(name)


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


@dataclass
class PhaseResult:
    phase: str
    steps: int
    resumed_from: int
    seconds: float
    last_loss: float


def run_phase(
    model: nn.Module,
    *,
    phase: str,
    steps: int,
    accumulation: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    make_loader: Callable[[int], "torch.utils.data.DataLoader"],
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
) -> PhaseResult:
    """Train `model` for `steps` mini-batches; `loss_fn(model, images, labels)` returns a scalar loss."""
    start = 0
    if resume_path is not None and Path(resume_path).is_file():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint and state.get("phase") == phase:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = int(state["step"])
            print(f"[{phase}] resuming from step {start} ({resume_path})")
        else:
            print(f"[{phase}] ignoring {resume_path}: it belongs to another configuration or phase")
    total_updates = max(steps // accumulation, 1)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    n_logged, last_loss = 0, float("nan")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(total=steps, initial=start, desc=phase, disable=not progress, dynamic_ncols=True)
    step = start
    for images, labels in make_loader(start):
        if interrupt_at is not None and step == interrupt_at:
            bar.close()
            raise KeyboardInterrupt(f"simulated interruption at step {step}")
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = loss_fn(model, images, labels)
        (loss / accumulation).backward()
        loss_sum += loss.detach()
        n_logged += 1
        step += 1
        if step % accumulation == 0:
            update = step // accumulation
            factor = poly_factor(update - 1, total_updates, poly_power)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if after_update is not None:
                after_update()
            if resume_path is not None and step % checkpoint_every < accumulation and step < steps:
                _save_resume(resume_path, model, optimizer, step, phase, fingerprint)
        if step % log_every == 0 or step == steps:
            last_loss = (loss_sum / n_logged).item()
            loss_sum.zero_()
            n_logged = 0
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if logger is not None:
                logger(step, {f"{phase}/loss": last_loss, f"{phase}/lr": optimizer.param_groups[0]["lr"]})
        if validate is not None and val_every and step % val_every == 0 and step < steps:
            metrics = validate(step)
            model.train()
            if logger is not None:
                logger(step, metrics)
        bar.update(1)
    bar.close()
    if validate is not None:
        metrics = validate(step)
        if logger is not None:
            logger(step, metrics)
    return PhaseResult(phase, steps, start, time.perf_counter() - t0, last_loss)


def _save_resume(path, model, optimizer, step, phase, fingerprint) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "phase": phase,
        "fingerprint": fingerprint,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def clear_resume(path: str | Path | None) -> None:
    if path is not None and Path(path).is_file():
        Path(path).unlink()
