"""Benchmark: cost of the prototype methods relative to DeepLab, measured side by side in one run.

`python -m scaleprotoseg.tools.bench` (or `make bench`) prints lines

    step_time_ratio <method>/deeplab = <x>    [<head>, <precision>]
    step_time_ratio scaleprotoseg_groups/deeplab_frozen_trunk = <x>    [<head>, <precision>]
    projection_pass_ratio <method> = <x>    [<head>]   (one projection pass / one evaluation pass, same images)

on the same backbone and the same batch, as the median over several training steps after warm-up (forward,
loss, backward and optimiser update; stage 1: the joint phase; the groups: group joint). Like for like:

- heads as the presets have them (`HEADS`): Pascal (21 classes, MSC scales 0.5 and 0.75) and ADE20K (150
  classes, 1,800 prototypes, no MSC);
- labels with a realistic number of classes per crop (`crop_labels`: a seeded Voronoi map of 2–4 of 21
  classes, background always among them, or 8–15 of 150, with void on the region borders), and the
  per-image classes (`losses.present_classes`) computed on the host outside the timed region, as the loader does;
- the groups, which train only their head on a frozen trunk under `no_grad`, against DeepLab training only
  its ASPP head with the trunk frozen (`deeplab_frozen_trunk`); the other methods against the full DeepLab step;
- `--precision fp32 | bf16 | both` (default: fp32 on the CPU, both on CUDA; bf16 is autocast of the trunk and
  ASPP, on the CPU too, with the prototype head and losses in float32 as in training).

DeepLab is stepped with Adam by default, like the prototype methods, so that the ratio measures what the
prototype head and its losses add (`--deeplab-optimizer sgd` uses DeepLab's own SGD recipe).
Absolute times depend on the machine and its load; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ..config import GroupTrainConfig, ModelConfig, ProjectConfig, PrototypeTrainConfig
from ..device import autocast
from ..evaluation import evaluate
from ..losses import present_classes
from ..models.build import build_model
from ..training.loop import make_optimizer
from ..training.phases import deeplab_loss, group_loss, phase_spec, stage1_loss

PROTO = dict(features=64, batch_size=2, accumulation=1, warmup_steps=1, joint_steps=1,
             lr_warmup_aspp=1e-4, lr_warmup_prototypes=1e-4, lr_joint_trunk=1e-5, lr_joint_aspp=1e-4,
             lr_joint_prototypes=1e-4, weight_decay=5e-4, poly_power=0.9, loss_ce=1.0, loss_kld=0.25, loss_l1=1e-4)
GROUP = dict(groups=3, batch_size=2, accumulation=1, warmup_steps=1, joint_steps=1, lr_warmup_groups=1e-4,
             lr_joint_groups=1e-4, lr_joint_head=1e-4, poly_power=0.9, loss_ce=1.0, loss_l1=1e-3, loss_entropy=0.05)
# the fine-tuning phase reads the project stage's section
FINETUNE = ProjectConfig(rule="nearest", finetune_steps=1, lr_last_layer=1e-5, prune=False, prune_k=6, prune_threshold=3)
BASELINE = {"protoseg": "deeplab", "scaleprotoseg": "deeplab", "scaleprotoseg_groups": "deeplab_frozen_trunk"}


@dataclass(frozen=True)
class Head:
    """A preset's head: what the bench needs of it (params.yaml presets.<name>; tests/tools/test_gpu_check.py
    checks these copies against params.yaml, which the GPU check cannot read without PyYAML)."""

    name: str
    classes: int
    protoseg_per_class: int  # presets.<name>.protoseg.prototypes
    msc: tuple[float, ...]  # presets.<name>.model.msc_scales
    crop: int  # presets.<name>.data.crop (the paper's training crop)
    classes_per_crop: tuple[int, int]  # realistic labels: how many classes a crop shows (min, max)
    background: int | None  # a class present in every crop (Pascal's background), or None
    scaleprotoseg_per_scale: int = 3  # presets.<name>.scaleprotoseg.prototypes
    features: int = 64


HEADS = {
    "pascal": Head("pascal head", 21, 10, (0.5, 0.75), 321, (2, 4), 0),
    "ade20k": Head("ade20k head", 150, 12, (), 512, (8, 15), None),
}


def crop_labels(batch: int, size: int, num_classes: int, per_crop: tuple[int, int], background: int | None = None,
                seed: int = 0, regions_per_class: int = 2, border: float = 1 / 96, void: int = 255) -> torch.Tensor:
    """(batch, size, size) uint8 labels: per crop a seeded Voronoi map of n ~ U{per_crop} distinct classes
    (`background` always one of them), `regions_per_class`·max(per_crop) cells, each cell one of the crop's
    classes (every class at least one cell), and void on borders between classes (~`border`·size px wide)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = per_crop
    if not 1 <= lo <= hi <= num_classes:
        raise ValueError(f"classes per crop {per_crop} must lie in [1, {num_classes}]")
    n = torch.randint(lo, hi + 1, (batch, 1), generator=g)
    keys = torch.rand(batch, num_classes, generator=g)
    if background is not None:
        keys[:, background] = -1.0  # ranked first: in every crop
    order = keys.argsort(1)  # the crop's classes are order[:, :n]
    m = hi * regions_per_class
    cell = torch.arange(m).expand(batch, m)
    cell = torch.where(cell < n, cell, (torch.rand(batch, m, generator=g) * n).long())
    cell_class = order.gather(1, cell)  # (B, m)
    seeds = torch.rand(batch, m, 2, generator=g) * size
    r = torch.arange(size, dtype=torch.float32) + 0.5
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).view(1, -1, 2).expand(batch, -1, -1)
    dist, idx = torch.cdist(grid, seeds).topk(2, dim=-1, largest=False)  # nearest two cells per pixel
    first, second = cell_class.gather(1, idx[..., 0]), cell_class.gather(1, idx[..., 1])
    edge = (dist[..., 1] - dist[..., 0] < max(size * border, 1.0)) & (first != second)
    return torch.where(edge, void, first).view(batch, size, size).to(torch.uint8)


def model_config(backbone: str, width: int, msc=()) -> ModelConfig:
    return ModelConfig(backbone=backbone, width=width, pretrained=False, pretrained_path=None,
                       aspp_rates=(6, 12, 18, 24), freeze_bn=backbone == "resnet101", msc_scales=tuple(msc))


def _models(backbone: str, head: Head, width: int):
    """method → (model, train config) for DeepLab (full and frozen trunk) and the three prototype steps."""
    mc = model_config(backbone, width, head.msc)
    torch.manual_seed(0)
    deeplab = build_model("deeplab", mc, head.classes)
    frozen = copy.deepcopy(deeplab)
    for p in frozen.backbone.parameters():
        p.requires_grad_(False)
    frozen.bn_eval = True  # as the runner holds BatchNorm in phases that do not train the trunk
    out = {"deeplab": (deeplab, None), "deeplab_frozen_trunk": (frozen, None)}
    for m, n in (("protoseg", head.protoseg_per_class), ("scaleprotoseg", head.scaleprotoseg_per_scale)):
        out[m] = (build_model(m, mc, head.classes, prototypes=n, features=head.features),
                  PrototypeTrainConfig(prototypes=n, **{**PROTO, "features": head.features}))
    g = build_model("scaleprotoseg", mc, head.classes, prototypes=head.scaleprotoseg_per_scale, features=head.features)
    g.add_groups(GROUP["groups"])
    g.bn_eval = True
    out["scaleprotoseg_groups"] = (g, GroupTrainConfig(**GROUP))
    return out


def _step_fn(method, model, cfg, deeplab_optimizer: str = "adam", phase: str | None = None, device=None,
             precision: str = "fp32"):
    """One training step of `method` (x, y, classes=None) → loss: the loss under autocast, backward, optimiser
    update (and the groups' simplex projection). `phase`: which prototype phase (default: the joint phase
    of the method's stage); `device`: where autocast applies (default: the model's)."""
    device = device if device is not None else next(model.parameters()).device
    if method.startswith("deeplab"):
        groups = model.param_groups()  # the frozen trunk's parameters do not require grad: not in "trunk"
        opt = make_optimizer(deeplab_optimizer, [{"params": groups["trunk"], "lr": 1e-5},
                                                 {"params": groups["head"], "lr": 1e-4}], weight_decay=5e-4)
        loss_fn = deeplab_loss
    else:
        phase = phase or ("group_joint" if method == "scaleprotoseg_groups" else "joint")
        opt = make_optimizer("adam", phase_spec(model, phase, SimpleNamespace(train=cfg, project=FINETUNE)).groups)
        loss_fn = group_loss(cfg) if phase.startswith("group") else stage1_loss(cfg)
    project = method == "scaleprotoseg_groups"

    def step(x, y, classes=None):
        with autocast(device, precision):
            loss = loss_fn(model, x, y, classes)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if project:
            model.group_head.project()
        return loss

    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(models, x, y, classes, device, warmup: int, steps: int, precision: str = "fp32",
               deeplab_optimizer: str = "adam") -> dict[str, float]:
    """Median step time (s) per method. Methods are interleaved step by step, so that load drifts hit all
    alike, and the order rotates every round (the first model of a round pays for switching)."""
    fns = {}
    for m, (model, cfg) in models.items():
        model.to(device).train()
        fns[m] = _step_fn(m, model, cfg, deeplab_optimizer, device=device, precision=precision)
    times = {m: [] for m in models}
    names = list(fns)
    for i in range(warmup + steps):
        for m in names[i % len(names):] + names[: i % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            fns[m](x, y, classes)
            _sync(device)
            if i >= warmup:
                times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


class _Loader(list):
    """A list of (x, y, idx) batches that also exposes `.dataset` with a length, like a DataLoader."""

    @property
    def dataset(self):
        return range(sum(len(b[2]) for b in self))


def time_projection(models, images, labels, device, repeats: int) -> dict[str, float]:
    """One projection pass divided by one evaluation pass over the same images (median of repeats)."""
    from ..projection import find_nearest

    loader = _Loader([(images[i : i + 1], labels[i : i + 1], torch.tensor([i])) for i in range(len(images))])
    out = {}
    for m, (model, _) in models.items():
        if m.startswith("deeplab") or m == "scaleprotoseg_groups":
            continue
        model.to(device).eval()
        ev, pr = [], []
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            evaluate(model, loader, model.num_classes, device, progress=False)
            _sync(device)
            t1 = time.perf_counter()
            find_nearest(model, loader, device, progress=False)
            _sync(device)
            t2 = time.perf_counter()
            ev.append(t1 - t0)
            pr.append(t2 - t1)
        out[m] = statistics.median(pr) / statistics.median(ev)
    return out


def bench_batch(head: Head, size: int, batch: int, device, seed: int = 0):
    """(images, int64 labels, present classes) on `device`: the classes computed on the host, as the loader does."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = crop_labels(batch, size, head.classes, head.classes_per_crop, head.background, seed=seed)
    classes = present_classes(y, head.classes)
    x = x.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device).long(), classes.to(device)


def run(head: Head, backbone: str, size: int, batch: int, width: int, device, warmup: int, steps: int,
        precisions=("fp32",), deeplab_optimizer: str = "adam", projection: bool = True) -> dict[str, dict]:
    """Print the ratios of `head` for each precision; return {precision: {"ms": {method: ms}, "ratio": {method: x}}}."""
    models = _models(backbone, head, width)
    if device.type == "cuda":
        for model, _ in models.values():
            model.to(device=device, memory_format=torch.channels_last)
    x, y, classes = bench_batch(head, size, batch, device)
    P = {m: mdl.prototypes.num_prototypes for m, (mdl, _) in models.items() if not m.startswith("deeplab")}
    void = (y == 255).float().mean().item() * 100
    print(f"# {head.name}: backbone {backbone}, {head.classes} classes, MSC scales {list(head.msc) or 'none'}, input "
          f"{batch}×3×{size}×{size}, labels {head.classes_per_crop[0]}–{head.classes_per_crop[1]} classes per crop "
          f"(void {void:.1f} %), device {device}, prototypes {P}; median of {steps} steps after {warmup} warm-up; "
          f"deeplab optimiser {deeplab_optimizer}; {torch.get_num_threads()} CPU threads")
    out = {}
    for prec in precisions:
        t = time_steps(models, x, y, classes, device, warmup, steps, prec, deeplab_optimizer)
        ratio = {m: t[m] / t[base] for m, base in BASELINE.items()}
        out[prec] = {"ms": {m: v * 1000 for m, v in t.items()}, "ratio": ratio}
        print(f"#   [{prec}] deeplab step {t['deeplab'] * 1000:.1f} ms, deeplab_frozen_trunk step "
              f"{t['deeplab_frozen_trunk'] * 1000:.1f} ms")
        for m, base in BASELINE.items():
            print(f"step_time_ratio {m}/{base} = {ratio[m]:.3f}    [{head.name}, {prec}]")
    if "bf16" in out and "fp32" in out:
        speed = ", ".join(f"{m} ×{out['fp32']['ms'][m] / out['bf16']['ms'][m]:.2f}" for m in models)
        print(f"#   bf16 speed-up over fp32 (step time): {speed}")
    if projection:
        imgs, labs, _ = bench_batch(head, size, 4, device, seed=1)
        for m, r in time_projection(models, imgs, labs, device, repeats=3).items():
            print(f"projection_pass_ratio {m} = {r:.3f}    [{head.name}]")
    return out


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def interpret_memory(height: int = 1024, width: int = 2048, classes: int = 19, device=torch.device("cpu")) -> None:
    """Peak memory and time of the interpretability metrics for one image of height × width with
    classes × 4 scales × 3 prototypes (Cityscapes: 19 → 228), on the small trunk (the metrics' cost, not the
    trunk's, is what is measured; ResNet-101's activations would add their own)."""
    import resource

    from ..config import DataConfig
    from ..data.prepared import DatasetMeta
    from ..interpretability import evaluate_interpretability
    from ..models.prototypes import prototype_names

    mc = model_config("small", 16)
    torch.manual_seed(0)
    model = build_model("scaleprotoseg", mc, classes, prototypes=3, features=64).to(device).eval()
    names_cls = tuple(f"class{c}" for c in range(classes))
    meta = DatasetMeta(name="bench", classes=names_cls, splits={"val": ("img",)}, parts={n: ("a", "b", "c", "d") for n in names_cls})
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    label = np.repeat((np.arange(width) * classes // width)[None, :], height, 0).astype(np.uint8)  # a stripe per class
    parts = (np.arange(height)[:, None] * 4 // height + 1).repeat(width, 1).astype(np.uint8)  # 4 parts per stripe

    class OneImage:
        def __init__(self):
            self.meta = meta

        def __len__(self):
            return 1

        def sample(self, i):
            return image, label

        def parts(self, i):
            return parts

    data_cfg = DataConfig(crop=64, scale_range=(1.0, 1.0), flip=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    names = prototype_names(model, names_cls)
    base = _rss_mib()
    t0 = time.perf_counter()
    res = evaluate_interpretability(model, OneImage(), data_cfg, device, seed=0, names=names, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# interpretability metrics: one {height}×{width} image, {model.prototypes.num_prototypes} prototypes, "
          f"{classes} classes (clean + noisy forward, consistency, stability, overlaps)")
    print(f"interpret_peak_rss_mib = {peak:.0f}    (process peak; {peak - base:.0f} MiB above the {base:.0f} MiB before the call)")
    print(f"interpret_seconds_per_image = {seconds:.2f}")
    print(f"#   consistency {res.metrics['consistency']:.1f}, stability {res.metrics['stability']:.1f} (random model: values meaningless)")


def precisions(choice: str, device: torch.device) -> tuple[str, ...]:
    """`--precision` → the precisions to time (`auto`: both on CUDA, fp32 on the CPU; no bf16 where CUDA lacks it)."""
    if choice == "auto":
        choice = "both" if device.type == "cuda" else "fp32"
    out = ("fp32", "bf16") if choice == "both" else (choice,)
    if "bf16" in out and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("# this GPU has no bf16: timing fp32 only")
        out = ("fp32",)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet101", choices=["resnet101", "small"])
    ap.add_argument("--size", type=int, default=None, help="input side, Pascal head (default 161 on the CPU, the crop 321 on CUDA)")
    ap.add_argument("--ade-size", type=int, default=None, help="input side, ADE20K head (default 97 on the CPU, the crop 512 on CUDA)")
    ap.add_argument("--heads", default="pascal,ade20k", help="comma-separated subset of pascal,ade20k")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=32, help="width of the small backbone")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "both"],
                    help="auto: both on CUDA, fp32 on the CPU (bf16 on the CPU: CPU autocast)")
    ap.add_argument("--no-projection", action="store_true", help="skip the projection-pass ratios")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default; 1 keeps a shared, "
                    "loaded machine from stalling every parallel kernel on a busy core)")
    ap.add_argument("--interpret-memory", action="store_true",
                    help="only the interpretability-metrics memory benchmark (one 1024×2048 image, 228 prototypes)")
    ap.add_argument("--deeplab-optimizer", default="adam", choices=["adam", "sgd"],
                    help="adam (default) isolates the cost of the head and losses; sgd is DeepLab's own recipe")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.interpret_memory:
        interpret_memory(device=device)
        return
    heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    unknown = sorted(set(heads) - set(HEADS))
    if unknown or not heads:
        ap.error(f"--heads {a.heads!r}: choose from {sorted(HEADS)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed sizes, as in training
    cpu = device.type != "cuda"
    sizes = {"pascal": a.size or (161 if cpu else HEADS["pascal"].crop), "ade20k": a.ade_size or (97 if cpu else HEADS["ade20k"].crop)}
    for h in heads:
        run(HEADS[h], a.backbone, sizes[h], a.batch, a.width, device, a.warmup, a.steps,
            precisions(a.precision, device), a.deeplab_optimizer, projection=not a.no_projection)


if __name__ == "__main__":
    main()
