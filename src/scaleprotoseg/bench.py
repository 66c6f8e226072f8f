"""Benchmark: cost of the prototype methods relative to DeepLab, measured side by side in one run.

`python -m scaleprotoseg.bench` (or `make bench`) prints lines

    step_time_ratio <method>/deeplab = <x>
    projection_pass_ratio <method> = <x>      (one projection pass / one evaluation pass, same images)

for every prototype method, on the same backbone and the same input, as the median over several training
steps after warm-up (forward, loss, backward and optimiser update of the joint phase; stage 2: group joint).
Configurations: a Pascal-sized head (21 classes) and an ADE20K-sized head (150 classes, 1,800 prototypes).
DeepLab is stepped with Adam by default, like the prototype methods, so that the ratio measures what the
prototype head and its losses add (`--deeplab-optimizer sgd` uses DeepLab's own SGD recipe).
Absolute times depend on the machine and its load; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch

from .config import GroupTrainConfig, ModelConfig, ProjectConfig, PrototypeTrainConfig
from .evaluation import evaluate
from .models.build import build_model
from .training.loop import make_optimizer
from .training.phases import deeplab_loss, group_loss, phase_spec, stage1_loss

PROTO = dict(features=64, batch_size=2, accumulation=1, warmup_steps=1, joint_steps=1,
             lr_warmup_aspp=1e-4, lr_warmup_prototypes=1e-4, lr_joint_trunk=1e-5, lr_joint_aspp=1e-4,
             lr_joint_prototypes=1e-4, weight_decay=5e-4, poly_power=0.9, loss_ce=1.0, loss_kld=0.25, loss_l1=1e-4)
GROUP = dict(groups=3, batch_size=2, accumulation=1, warmup_steps=1, joint_steps=1, lr_warmup_groups=1e-4,
             lr_joint_groups=1e-4, lr_joint_head=1e-4, poly_power=0.9, loss_ce=1.0, loss_l1=1e-3, loss_entropy=0.05)
# the fine-tuning phase reads the project stage's section
FINETUNE = ProjectConfig(rule="nearest", finetune_steps=1, lr_last_layer=1e-5, prune=False, prune_k=6, prune_threshold=3)


def _models(backbone: str, num_classes: int, protoseg_per_class: int, width: int):
    mc = ModelConfig(backbone=backbone, width=width, pretrained=False, pretrained_path=None,
                     aspp_rates=(6, 12, 18, 24), freeze_bn=backbone == "resnet101")
    torch.manual_seed(0)
    out = {"deeplab": (build_model("deeplab", mc, num_classes), None)}
    for m, n in (("protoseg", protoseg_per_class), ("scaleprotoseg", 3)):
        cfg = PrototypeTrainConfig(prototypes=n, **PROTO)
        out[m] = (build_model(m, mc, num_classes, prototypes=n, features=64), cfg)
    g = build_model("scaleprotoseg", mc, num_classes, prototypes=3, features=64)
    g.add_groups(3)
    out["scaleprotoseg_groups"] = (g, GroupTrainConfig(**GROUP))
    return out


def _step_fn(method, model, cfg, deeplab_optimizer="adam", phase=None):
    """One training step of `method` (x, y) → loss: loss, backward, optimiser update (and the groups' simplex
    projection). `phase`: which prototype phase (default: the joint phase of the method's stage)."""
    if method == "deeplab":
        opt = make_optimizer(deeplab_optimizer, [{"params": model.param_groups()["trunk"], "lr": 1e-5},
                                     {"params": model.param_groups()["head"], "lr": 1e-4}], weight_decay=5e-4)
        loss_fn = deeplab_loss
    else:
        phase = phase or ("group_joint" if method == "scaleprotoseg_groups" else "joint")
        opt = make_optimizer("adam", phase_spec(model, phase, SimpleNamespace(train=cfg, project=FINETUNE)).groups)
        loss_fn = group_loss(cfg) if phase.startswith("group") else stage1_loss(cfg)
    project = method == "scaleprotoseg_groups"

    def step(x, y):
        loss = loss_fn(model, x, y)
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


def time_steps(models, x, y, device, warmup: int, steps: int, deeplab_optimizer: str = "adam") -> dict[str, float]:
    """Median step time per method. Methods are interleaved step by step, so that load drifts hit all alike,
    and the order rotates every round (the first model of a round pays for switching)."""
    fns = {}
    for m, (model, cfg) in models.items():
        model.to(device).train()
        fns[m] = _step_fn(m, model, cfg, deeplab_optimizer)
    times = {m: [] for m in models}
    names = list(fns)
    for i in range(warmup + steps):
        for m in names[i % len(names):] + names[: i % len(names)]:
            fn = fns[m]
            _sync(device)
            t0 = time.perf_counter()
            fn(x, y)
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
    from .projection import find_nearest

    loader = _Loader([(images[i : i + 1], labels[i : i + 1], torch.tensor([i])) for i in range(len(images))])
    out = {}
    for m, (model, _) in models.items():
        if m in ("deeplab", "scaleprotoseg_groups"):
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


def run(name, backbone, num_classes, protoseg_per_class, size, batch, width, device, warmup, steps, deeplab_optimizer="adam"):
    torch.manual_seed(0)
    models = _models(backbone, num_classes, protoseg_per_class, width)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, size, size), device=device)
    y[:, :4] = 255
    t = time_steps(models, x, y, device, warmup, steps, deeplab_optimizer)
    P = {m: mdl.prototypes.num_prototypes for m, (mdl, _) in models.items() if m != "deeplab"}
    print(f"# {name}: backbone {backbone}, {num_classes} classes, input {batch}×3×{size}×{size}, device {device}, "
          f"prototypes {P}; median of {steps} steps after {warmup} warm-up; deeplab optimiser {deeplab_optimizer}")
    print(f"#   deeplab step: {t['deeplab'] * 1000:.1f} ms")
    for m in models:
        if m != "deeplab":
            print(f"step_time_ratio {m}/deeplab = {t[m] / t['deeplab']:.3f}    [{name}]")
    imgs = torch.randn(4, 3, size, size, device=device)
    labs = torch.randint(0, num_classes, (4, size, size), device=device)
    for m, r in time_projection(models, imgs, labs, device, repeats=3).items():
        print(f"projection_pass_ratio {m} = {r:.3f}    [{name}]")


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

    from .config import DataConfig
    from .data.prepared import DatasetMeta
    from .interpretability import evaluate_interpretability
    from .models.prototypes import prototype_names

    mc = ModelConfig(backbone="small", width=16, pretrained=False, pretrained_path=None, aspp_rates=(6, 12, 18, 24), freeze_bn=False)
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet101", choices=["resnet101", "small"])
    ap.add_argument("--size", type=int, default=161, help="input side (Pascal-sized head)")
    ap.add_argument("--ade-size", type=int, default=97, help="input side (ADE20K-sized head)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--width", type=int, default=32, help="width of the small backbone")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--interpret-memory", action="store_true",
                    help="only the interpretability-metrics memory benchmark (one 1024×2048 image, 228 prototypes)")
    ap.add_argument("--deeplab-optimizer", default="adam", choices=["adam", "sgd"],
                    help="adam (default) isolates the cost of the head and losses; sgd is DeepLab's own recipe")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if a.interpret_memory:
        interpret_memory(device=device)
        return
    run("pascal head", a.backbone, 21, 10, a.size, a.batch, a.width, device, a.warmup, a.steps, a.deeplab_optimizer)
    run("ade20k head", a.backbone, 150, 12, a.ade_size, a.batch, a.width, device, a.warmup, a.steps, a.deeplab_optimizer)


if __name__ == "__main__":
    main()
