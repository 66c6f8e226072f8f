"""What the paper schedule of each dataset costs: per method, the training micro-batches of every phase, the
validation passes during training, the evaluation and projection passes, and the time they take.

`python -m scaleprotoseg.tools.cost` counts the floating-point operations of one micro-batch of every phase on
PyTorch's `meta` device (no computation, seconds on any machine): the real preset model at the preset's crop,
batch and MSC scales, forward plus backward through exactly the parameters the phase trains. Time is then
FLOP / `--tflops` (a sustained rate you supply: an assumption, printed with the result).

`--measure N` instead times N real micro-batches of every phase (the training code's losses, backward and
optimiser step) on `--device` after a warm-up, and gives the time from those measured step times: run it
on the GPU you will train on. Evaluation and projection are counted as forward passes over the split sizes
of the official datasets, at each preset's evaluation resolution. So is validation during training: in each
phase the training stage runs (`run_phase`), one validation every `runtime.val_every` mini-batches before the
last and one at the end, each over `runtime.val_images` images (the whole val split when 0).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from ..config import load_config, read_params
from ..paths import repo_root
from ..training.phases import METHOD_PHASES, phase_steps

DATASETS = ("pascal", "cityscapes", "ade20k", "coco_stuff", "em")
METHODS = ("deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups")
CLASSES = {"pascal": 21, "cityscapes": 19, "ade20k": 150, "coco_stuff": 182, "em": 2}
# (val images, projection images, typical evaluation input (H, W) when the preset evaluates at native size)
SPLITS = {"pascal": (1449, 1464, (500, 375)), "cityscapes": (500, 2975, (1024, 2048)),
          "ade20k": (2000, 20210, (512, 683)), "coco_stuff": (5000, 118000, (480, 640)), "em": (10, 20, (512, 512))}
PHASES = {"deeplab": ("train",), "protoseg": ("warmup", "joint", "finetune"),
          "scaleprotoseg": ("warmup", "joint", "finetune"), "scaleprotoseg_groups": ("group_warmup", "group_joint")}


# The default sustained rate: fp32 convolutions run as TF32 (PyTorch's cuDNN default) on an A100/H100-class
# GPU train a ResNet at roughly 25 TFLOP/s (ResNet-50 at ~1,000 images/s × 24.6 GFLOP per image and step).
# An assumption, not a measurement: `--measure` replaces it with measured step times.
TFLOPS = 25.0


@dataclass
class PhaseCost:
    dataset: str
    method: str
    phase: str
    micro_batches: int
    tflop_per_micro_batch: float
    seconds_per_micro_batch: float | None = None  # measured


@dataclass
class Passes:
    """Forward passes at the evaluation resolution of one (dataset, method)."""

    validations: int  # during training, all phases together
    val_images: int  # images per validation
    eval_projection: int  # the evaluate stage's whole split, projection (and ProtoSeg's pruning) passes
    tflop_per_forward: float

    @property
    def validation(self) -> int:
        return self.validations * self.val_images


def validations(steps: int, val_every: int) -> int:
    """Validations `run_phase` runs in a phase of `steps` mini-batches: every `val_every` while the step is below
    `steps` (none when 0), and one at the end."""
    if steps <= 0:
        return 0
    return ((steps - 1) // val_every if val_every > 0 else 0) + 1


def validation_passes(cfg, dataset: str) -> tuple[int, int]:
    """(validations during the training stage's phases, images per validation) of `cfg`'s method; fine-tuning
    runs in the project stage, without validation."""
    n = sum(validations(phase_steps(cfg, ph), cfg.runtime.val_every) for ph in METHOD_PHASES[cfg.method])
    n_val, size = SPLITS[dataset][0], cfg.runtime.val_images
    return n, size if 0 < size < n_val else n_val


def _model(cfg, K):
    from ..models.build import build_for

    return build_for(cfg, K, offline=True)


def _eval_size(cfg, dataset) -> tuple[int, int]:
    d = cfg.data
    if d.eval_size is not None:
        return tuple(d.eval_size)
    h, w = SPLITS[dataset][2]
    if d.eval_short_side is not None:
        s = d.eval_short_side / min(h, w)
        return round(h * s), round(w * s)
    return h, w


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def _set_phase(model, cfg, phase):
    from ..training.phases import phase_spec, trunk_frozen

    if phase != "train":  # DeepLab's "train": every parameter that is not a frozen BatchNorm affine
        phase_spec(model, phase, cfg)
        model.bn_eval = cfg.model.freeze_bn or trunk_frozen(phase)
    model.train()


def count_tflop(model, cfg, phase, batch, size, train=True) -> float:
    """FLOP (×1e12) of one forward (+ backward when `train`) on `meta`, through the phase's trainable params.
    The losses' own arithmetic (a few element-wise ops per logit) is not counted; it is negligible."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to("meta")
    x = torch.empty(batch, 3, *size, device="meta")
    with FlopCounterMode(display=False) as fc:
        if train:
            _set_phase(model, cfg, phase)
            outs = [t for t in _tensors(model(x)) if t.requires_grad and t.is_floating_point()]
            if outs:
                sum(t.sum() for t in outs).backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
    return fc.get_total_flops() / 1e12


def measure_seconds(model, cfg, method, phase, batch, size, device, steps: int, warmup: int = 2) -> float:
    """Median seconds of one real micro-batch of `phase` (the bench's training step: loss, backward, optimiser
    update; DeepLab with its SGD) on `device`."""
    from .bench import _step_fn, _sync

    model = model.to(device)
    _set_phase(model, cfg, phase)
    step = _step_fn(method, model, cfg.train, deeplab_optimizer="sgd", phase=None if phase == "train" else phase)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=gen).to(device)
    y = torch.randint(0, model.num_classes, (batch, *size), generator=gen).to(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def estimate(params: dict, datasets=DATASETS, methods=METHODS, measure: int = 0, device="cpu") -> tuple[list, dict]:
    """Per (dataset, method, phase) costs, and per (dataset, method) the forward passes of validation, evaluation
    and projection (`Passes`)."""
    device = torch.device(device)
    rows, passes = [], {}
    for ds in datasets:
        for m in methods:
            cfg = load_config(params, dataset=ds, method=m)
            t, K = cfg.train, CLASSES[ds]
            crop = (cfg.data.crop, cfg.data.crop)
            for phase in PHASES[m]:
                n = phase_steps(cfg, phase)
                if n == 0:
                    continue
                tf = count_tflop(_model(cfg, K), cfg, phase, t.batch_size, crop)
                sec = measure_seconds(_model(cfg, K), cfg, m, phase, t.batch_size, crop, device, measure) if measure else None
                rows.append(PhaseCost(ds, m, phase, n, tf, sec))
            fwd = count_tflop(_model(cfg, K), cfg, None, 1, _eval_size(cfg, ds), train=False)
            n_val, n_proj, _ = SPLITS[ds]
            n_fwd = n_val + (n_proj if m in ("protoseg", "scaleprotoseg") else 0) * (2 if m == "protoseg" and cfg.project.prune else 1)
            passes[(ds, m)] = Passes(*validation_passes(cfg, ds), n_fwd, fwd)
    return rows, passes


def report(rows, passes, tflops: float) -> str:
    """A markdown table: per dataset and method, micro-batches, PFLOP (training, validation during training,
    evaluation + projection) and hours (all of them)."""
    head = ("| dataset | method | micro-batches | TFLOP / micro-batch (phases) | training PFLOP "
            "| validations × images | validation PFLOP | eval + projection PFLOP | hours |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    measured = all(r.seconds_per_micro_batch is not None for r in rows)
    for (ds, m), p in passes.items():
        rs = [r for r in rows if r.dataset == ds and r.method == m]
        train_pf = sum(r.micro_batches * r.tflop_per_micro_batch for r in rs) / 1e3
        val_pf = p.validation * p.tflop_per_forward / 1e3
        pass_pf = p.eval_projection * p.tflop_per_forward / 1e3
        fwd_hours = (val_pf + pass_pf) * 1e3 / tflops / 3600
        if measured:
            hours = sum(r.micro_batches * r.seconds_per_micro_batch for r in rs) / 3600 + fwd_hours
        else:
            hours = train_pf * 1e3 / tflops / 3600 + fwd_hours
        per = ", ".join(f"{r.phase} {r.tflop_per_micro_batch:.2f}" for r in rs)
        lines.append(f"| {ds} | {m} | {sum(r.micro_batches for r in rs):,} | {per} | {train_pf:,.0f} "
                     f"| {p.validations:,} × {p.val_images:,} | {val_pf:,.1f} | {pass_pf:,.1f} | {hours:,.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(repo_root() / "params.yaml"))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--tflops", type=float, default=TFLOPS,
                    help="sustained TFLOP/s assumed for counted FLOP (and for forward passes when measuring)")
    ap.add_argument("--measure", type=int, default=0, help="time this many real micro-batches per phase on --device")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    rows, passes = estimate(read_params(a.params), a.datasets, a.methods, a.measure, a.device)
    how = (f"measured step times on {a.device} (median of {a.measure}); validation, evaluation and projection "
           f"at {a.tflops:g} TFLOP/s"
           if a.measure else f"counted FLOP at an assumed sustained {a.tflops:g} TFLOP/s (not measured)")
    print(f"# paper schedules: {how}")
    print(report(rows, passes, a.tflops))


if __name__ == "__main__":
    main()
