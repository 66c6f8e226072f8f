"""`make gpu-check`: one short check of training on a CUDA machine, with nothing but PyTorch, NumPy and this
package's source (`PYTHONPATH=src python3 -m scaleprotoseg.tools.gpu_check`; no PyYAML, tqdm, PIL, DVC needed).

Parts, each catching its own failure (reported in the table; the exit status is 1 if any failed):

- `train <method>`: `--steps` mini-batches of each method's training phase through `run_phase` (deeplab:
  train; protoseg, scaleprotoseg: joint; the groups: group joint) with Pascal's model, crop, batch and
  accumulation (`PASCAL_*`, ResNet-101 trunk with random weights) on random images with realistic labels
  (`bench.crop_labels`), in `--precision` (auto: bf16 where the GPU has it): step time, images/s, peak GPU
  memory, and the trunk's model FLOP utilisation (its forward + backward FLOPs, counted once with
  `FlopCounterMode`, per second of a step, over `--peak-tflops`).
- `torchrun`: `python -m torch.distributed.run --standalone --nproc_per_node=<--ddp-procs>` of this module
  with `--ddp-child`: NCCL (gloo with `--cpu-smoke`), a ScaleProtoSeg joint phase through `run_phase`, then
  a few steps through DistributedDataParallel itself (even with one process), and an all-reduce.
- `bench <head>`: the bench's ratios (`scaleprotoseg.tools.bench`) at the paper trunk and crops, bf16 and fp32.

The table is printed at the end and written as JSON to `--out`. `--cpu-smoke` runs the same code paths on
the CPU with tiny sizes (small trunk, a few steps) so that the check itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import GroupTrainConfig, ModelConfig, PrototypeTrainConfig, TrainConfig
from ..device import autocast, resolve_precision
from ..losses import present_classes, sharded_batch
from ..models.build import build_model
from ..training import distributed
from ..training.loop import LossStep, make_optimizer, run_phase
from ..training.phases import loss_for, phase_spec, trunk_frozen
from . import bench

# params.yaml presets.pascal resolved over defaults, copied here because a GPU machine may lack PyYAML
# (tests/tools/test_gpu_check.py checks every value against params.yaml). Random weights: pretrained is false.
PASCAL_MODEL = ModelConfig(backbone="resnet101", width=64, pretrained=False, pretrained_path=None,
                           aspp_rates=(6, 12, 18, 24), freeze_bn=True, msc_scales=(0.5, 0.75))
PASCAL_CROP = 321  # presets.pascal.data.crop
_PROTO = PrototypeTrainConfig(prototypes=10, features=64, batch_size=2, accumulation=5, warmup_steps=15000,
                              joint_steps=150000, lr_warmup_aspp=2.5e-4, lr_warmup_prototypes=2.5e-4,
                              lr_joint_trunk=2.5e-5, lr_joint_aspp=2.5e-4, lr_joint_prototypes=2.5e-4,
                              weight_decay=5e-4, poly_power=0.9, loss_ce=1.0, loss_kld=0.25, loss_l1=1e-4)
PASCAL_TRAIN = {
    "deeplab": TrainConfig(steps=100000, batch_size=2, accumulation=5, optimizer="sgd", lr=2.5e-4, head_lr_mult=10.0,
                           weight_decay=5e-4, momentum=0.9, poly_power=0.9),
    "protoseg": _PROTO,
    "scaleprotoseg": replace(_PROTO, prototypes=3),
    "scaleprotoseg_groups": GroupTrainConfig(groups=3, batch_size=2, accumulation=5, warmup_steps=10000, joint_steps=150000,
                                             lr_warmup_groups=2.5e-4, lr_joint_groups=2.5e-4, lr_joint_head=2.5e-4,
                                             poly_power=0.9, loss_ce=1.0, loss_l1=1e-3, loss_entropy=0.05),
}
PHASE = {"deeplab": "train", "protoseg": "joint", "scaleprotoseg": "joint", "scaleprotoseg_groups": "group_joint"}
# NVIDIA's H200 datasheet, dense (no sparsity): BF16 989 TFLOP/s, TF32 494 TFLOP/s (fp32 convolutions run as
# TF32 while torch.backends.cudnn.allow_tf32 is on, PyTorch's default)
PEAK_TFLOPS = (989.0, 494.0)
COLUMNS = ("part", "precision", "steps", "step_ms", "images_s", "peak_mem_gib", "trunk_tflop_s", "mfu_pct", "ratio",
           "status", "note")


@dataclass(frozen=True)
class Settings:
    model: ModelConfig
    crop: int
    steps: int  # measured mini-batches per method (after `warmup`)
    warmup: int
    bench_steps: int
    bench_warmup: int
    bench_sizes: dict  # head → input side
    ddp_steps: int
    budget_s: float  # parts that would start later are skipped


FULL = Settings(PASCAL_MODEL, PASCAL_CROP, steps=300, warmup=20, bench_steps=20, bench_warmup=5,
                bench_sizes={"pascal": bench.HEADS["pascal"].crop, "ade20k": bench.HEADS["ade20k"].crop},
                ddp_steps=30, budget_s=360)
SMOKE = Settings(replace(PASCAL_MODEL, backbone="small", width=8), crop=33, steps=5, warmup=1, bench_steps=1,
                 bench_warmup=0, bench_sizes={"pascal": 33, "ade20k": 25}, ddp_steps=5, budget_s=600)


def build(method: str, model_cfg: ModelConfig) -> torch.nn.Module:
    """The Pascal preset's network of `method` (the groups: a ScaleProtoSeg model with its group head)."""
    torch.manual_seed(0)
    if method == "deeplab":
        return build_model("deeplab", model_cfg, 21)
    base = "scaleprotoseg" if method == "scaleprotoseg_groups" else method
    model = build_model(base, model_cfg, 21, prototypes=PASCAL_TRAIN[base].prototypes, features=PASCAL_TRAIN[base].features)
    if method == "scaleprotoseg_groups":
        model.add_groups(PASCAL_TRAIN[method].groups)
    return model


def host_batches(n: int, batch: int, crop: int, pin: bool, seed: int = 0) -> list[tuple]:
    """n distinct host batches (images, uint8 labels, present classes), as the training loader yields them."""
    head = bench.HEADS["pascal"]
    out = []
    for i in range(n):
        x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(seed + i))
        y = bench.crop_labels(batch, crop, head.classes, head.classes_per_crop, head.background, seed=seed + i)
        b = (x, y, present_classes(y, head.classes))
        out.append(tuple(t.pin_memory() for t in b) if pin else b)
    return out


def stream(batches: list, steps: int):
    """make_loader(start) for run_phase: the batches in turn, `steps - start` of them."""
    return lambda start: (batches[i % len(batches)] for i in range(start, steps))


def trunk_flops(model: torch.nn.Module, batch: int, crop: int, trains: bool) -> float | None:
    """FLOPs of one step of the trunk over every MSC input (forward, + backward when it trains), counted
    on the `meta` device; None where this PyTorch has no FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    trunk = copy.deepcopy(model.backbone).to("meta")
    sides = [crop] + [int(crop * s) for s in model.msc_scales]  # the released MSC grid: ⌊n·p⌋
    with FlopCounterMode(display=False) as fc, torch.set_grad_enabled(trains):
        outs = [trunk(torch.empty(batch, 3, n, n, device="meta")) for n in sides]
        if trains:
            sum(o.sum() for o in outs).backward()
    return float(fc.get_total_flops())


def _peak(precision: str, peaks) -> float:
    return peaks[0] if precision in ("bf16", "fp16") else peaks[1]


def train_part(method: str, s: Settings, device: torch.device, precision: str, peaks) -> dict:
    """`s.warmup` then `s.steps` mini-batches of the method's phase through run_phase; the row of the table."""
    cfg = PASCAL_TRAIN[method]
    model = build(method, s.model).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    spec = phase_spec(model, PHASE[method], SimpleNamespace(train=cfg, project=None))
    model.bn_eval = s.model.freeze_bn or trunk_frozen(spec.name)  # as the runner sets it
    flops = trunk_flops(model, cfg.batch_size, s.crop, trains=any(p.requires_grad for p in model.backbone.parameters()))
    optimizer = make_optimizer(spec.optimizer, spec.groups, momentum=spec.momentum)
    batches = host_batches(4, cfg.batch_size, s.crop, pin=device.type == "cuda")
    after = model.group_head.project if method == "scaleprotoseg_groups" else None
    common = {"phase": spec.name, "accumulation": cfg.accumulation, "optimizer": optimizer, "device": device,
              "loss_fn": loss_for(cfg, spec.name), "poly_power": spec.poly_power, "after_update": after,
              "progress": False, "precision": precision}
    run_phase(model, steps=s.warmup, make_loader=stream(batches, s.warmup), log_every=max(s.warmup, 1), **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    res = run_phase(model, steps=s.steps, make_loader=stream(batches, s.steps), log_every=s.steps, **common)
    step_s = res.seconds / s.steps
    row = {"part": f"train {method}", "precision": precision, "steps": s.steps, "step_ms": step_s * 1000,
           "images_s": cfg.batch_size / step_s, "note": f"{spec.name} phase, last loss {res.last_loss:.4f}"}
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if flops is not None:
        row["trunk_tflop_s"] = flops / step_s / 1e12
        if device.type == "cuda":
            row["mfu_pct"] = 100 * row["trunk_tflop_s"] / _peak(precision, peaks)
    if not math.isfinite(res.last_loss):
        raise FloatingPointError(f"the loss is not finite ({res.last_loss}) after {s.steps} steps")
    return row


def bench_part(head: str, s: Settings, device: torch.device, precisions) -> list[dict]:
    """The bench's step times and ratios for `head` (the paper trunk and crop on CUDA), one row per method."""
    out = bench.run(bench.HEADS[head], s.model.backbone, s.bench_sizes[head], 2, s.model.width, device, s.bench_warmup,
                    s.bench_steps, precisions, projection=False)
    rows = []
    for prec, res in out.items():
        for m, ms in res["ms"].items():
            row = {"part": f"bench {head}: {m}", "precision": prec, "steps": s.bench_steps, "step_ms": ms,
                   "images_s": 2000 / ms}
            if m in bench.BASELINE:
                row["ratio"], row["note"] = res["ratio"][m], f"÷ {bench.BASELINE[m]}"
            if prec == "bf16" and "fp32" in out:
                row["note"] = (row.get("note", "") + f" bf16 ×{out['fp32']['ms'][m] / ms:.2f} vs fp32").strip()
            rows.append(row)
    return rows


def torchrun_part(a, s: Settings, device: torch.device) -> dict:
    """Start this module under torchrun with `--ddp-child` and read back the child's result line."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.ddp_procs}",
           "-m", "scaleprotoseg.tools.gpu_check", "--ddp-child", "--precision", a.precision] + (["--cpu-smoke"] if a.cpu_smoke else [])
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.ddp_timeout, check=False)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU_CHECK_DDP ")]
    if proc.returncode != 0 or not found:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"torchrun exited {proc.returncode}: " + " | ".join(tail))
    r = json.loads(found[0][len("GPU_CHECK_DDP "):])
    return {"part": f"torchrun {r['backend']} ×{r['world']}", "precision": r["precision"], "steps": r["steps"],
            "step_ms": r["seconds"] / r["steps"] * 1000, "status": "OK",
            "note": f"scaleprotoseg joint via run_phase (loss {r['loss']:.4f}), then {r['ddp_steps']} steps in DDP "
                    f"(loss {r['ddp_loss']:.4f}), all_reduce {r['all_reduce']}; {time.perf_counter() - t0:.0f} s in all"}


def ddp_child(a) -> int:
    """One torchrun process: join the group, run a ScaleProtoSeg joint phase, a few DDP-wrapped steps, an
    all-reduce; print one `GPU_CHECK_DDP {json}` line (rank 0)."""
    import torch.distributed as dist

    s = SMOKE if a.cpu_smoke else FULL
    cuda = torch.cuda.is_available() and not a.cpu_smoke
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend)
    try:
        world = distributed.current()
        precision = resolve_precision(a.precision, device)
        cfg = PASCAL_TRAIN["scaleprotoseg"]
        model = build("scaleprotoseg", s.model).to(device)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        spec = phase_spec(model, "joint", SimpleNamespace(train=cfg, project=None))
        model.bn_eval = True
        optimizer = make_optimizer(spec.optimizer, spec.groups)
        per = max(cfg.batch_size // world.size, 1)  # this process's shard of the global batch
        batches = host_batches(2, per, s.crop, pin=cuda, seed=100 + world.rank)
        loss_fn = loss_for(cfg, "joint")
        res = run_phase(model, phase="joint", steps=s.ddp_steps, accumulation=cfg.accumulation, optimizer=optimizer,
                        loss_fn=loss_fn, make_loader=stream(batches, s.ddp_steps), device=device,
                        poly_power=spec.poly_power, log_every=s.ddp_steps, progress=False, precision=precision)
        ddp = distributed.wrap(LossStep(model, loss_fn), device)  # DDP even for one process: its all-reduce path
        ddp_steps = 2
        for x, y, c in batches[:ddp_steps]:
            with autocast(device, precision), sharded_batch(world.size):  # as run_phase: means over the global batch
                loss = ddp(x.to(device), y.to(device).long(), c.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        one = torch.ones(1, device=device)
        dist.all_reduce(one)
        ok = int(one.item()) == world.size
        if world.main:
            print("GPU_CHECK_DDP " + json.dumps({"backend": backend, "world": world.size, "precision": precision,
                                                 "steps": s.ddp_steps, "seconds": res.seconds, "loss": res.last_loss,
                                                 "ddp_steps": ddp_steps, "ddp_loss": float(loss), "all_reduce": "ok" if ok else "WRONG"}),
                  flush=True)
        return 0 if ok and math.isfinite(res.last_loss) and math.isfinite(float(loss)) else 1
    finally:
        dist.destroy_process_group()


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table with the columns of `COLUMNS`."""
    cells = [list(COLUMNS)] + [[_fmt(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def guarded(name: str, fn, t_start: float, budget: float) -> list[dict]:
    """fn() → row(s); a failure or the exhausted time budget becomes a row saying so."""
    if time.perf_counter() - t_start > budget:
        return [{"part": name, "status": f"SKIPPED: time budget of {budget:.0f} s spent"}]
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        out = fn()
        rows = out if isinstance(out, list) else [out]
        print(f"== {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        return [{**r, "status": r.get("status", "OK")} for r in rows]
    except Exception as exc:  # noqa: BLE001 (each part reports its own failure; the others still run)
        traceback.print_exc()
        return [{"part": name, "status": f"FAIL: {type(exc).__name__}: {str(exc)[:300]}"}]
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help=f"measured mini-batches per method (default {FULL.steps}; smoke {SMOKE.steps})")
    ap.add_argument("--bench-steps", type=int, default=None, help=f"measured bench steps (default {FULL.bench_steps})")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="of the method runs and torchrun")
    ap.add_argument("--peak-tflops", type=float, nargs=2, default=PEAK_TFLOPS, metavar=("BF16", "FP32"),
                    help="the GPU's dense peak TFLOP/s for the MFU (default: H200, bf16 989, fp32 as TF32 494)")
    ap.add_argument("--ddp-procs", type=int, default=1, help="torchrun --nproc_per_node (NCCL; default 1)")
    ap.add_argument("--ddp-timeout", type=float, default=240, help="seconds before the torchrun part is abandoned")
    ap.add_argument("--budget-s", type=float, default=None, help=f"skip parts that would start later (default {FULL.budget_s:.0f})")
    ap.add_argument("--out", default="gpu_check.json", help="the table as JSON")
    ap.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU, tiny sizes (tests)")
    ap.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.cpu_smoke:
        torch.set_num_threads(1)  # tiny tensors: one thread, and no stalls on a loaded machine
    if a.ddp_child:
        return ddp_child(a)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or with --cpu-smoke to test the check itself.")
        return 2
    s = SMOKE if a.cpu_smoke else FULL
    s = replace(s, steps=a.steps or s.steps, bench_steps=a.bench_steps or s.bench_steps, budget_s=a.budget_s or s.budget_s)
    device = torch.device("cpu") if a.cpu_smoke else torch.device("cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes, as the training stage sets it
    precision = resolve_precision(a.precision, device)
    bench_precisions = ("bf16", "fp32") if device.type == "cpu" or torch.cuda.is_bf16_supported() else ("fp32",)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)"
    tf32 = getattr(torch.backends.cudnn, "allow_tf32", None)
    print(f"# gpu_check on {name}, torch {torch.__version__}; Pascal preset model ({s.model.backbone}, crop {s.crop}, "
          f"batch 2, accumulation 5, MSC {list(s.model.msc_scales)}); precision {precision}")
    print(f"# assumption: peak dense TFLOP/s bf16 {a.peak_tflops[0]:g}, fp32 {a.peak_tflops[1]:g} (TF32 convolutions: "
          f"cudnn.allow_tf32 = {tf32}); MFU = trunk forward+backward FLOPs per step / step time / peak")
    t0 = time.perf_counter()
    rows = []
    for m in PHASE:
        rows += guarded(f"train {m}", lambda m=m: train_part(m, s, device, precision, a.peak_tflops), t0, s.budget_s)
    rows += guarded("torchrun", lambda: torchrun_part(a, s, device), t0, s.budget_s)
    for h in bench.HEADS:
        rows += guarded(f"bench {h}", lambda h=h: bench_part(h, s, device, bench_precisions), t0, s.budget_s)
    seconds = time.perf_counter() - t0
    print(f"\n# gpu_check: {name}, torch {torch.__version__}, {seconds:.0f} s")
    print(table(rows))
    report = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "seconds": seconds,
              "settings": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in vars(s).items()},
              "assumptions": {"peak_tflops": {"bf16": a.peak_tflops[0], "fp32": a.peak_tflops[1]}, "cudnn_allow_tf32": tf32,
                              "mfu": "trunk forward+backward FLOPs per step / step time / peak"},
              "rows": rows}
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"# written to {a.out}")
    return 1 if any(r["status"].startswith("FAIL") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
