"""Training phases: exactly the intended parameters get gradients; every paper preset builds its model and
optimiser with the paper's numbers; bad method settings stop with a clear message."""

from __future__ import annotations

import pytest
import torch

from scaleprotoseg.config import METHODS, load_config
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.models.build import build_for
from scaleprotoseg.training.loop import make_optimizer
from scaleprotoseg.training.phases import TRAINS, group_loss, phase_spec, stage1_loss

SMALL = {
    "presets.embedded.model.width": 4,
    "experiment.device": "cpu",
}


def small_model(params, method):
    overrides = dict(SMALL)
    for m in ("protoseg", "scaleprotoseg"):
        overrides[f"presets.embedded.{m}.features"] = 4
    cfg = load_config(params, method=method, overrides=overrides)
    torch.manual_seed(0)
    return build_for(cfg, 3, offline=True), cfg


def grad_owners(model):
    """Which parameter groups received a non-zero gradient."""
    owners = set()
    for name, ps in model.param_groups().items():
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps):
            owners.add(name)
    return owners


@pytest.mark.parametrize("method,phase", [
    ("protoseg", "warmup"), ("protoseg", "joint"), ("protoseg", "finetune"),
    ("scaleprotoseg", "warmup"), ("scaleprotoseg", "joint"), ("scaleprotoseg", "finetune"),
    ("scaleprotoseg_groups", "group_warmup"), ("scaleprotoseg_groups", "group_joint"),
])
def test_each_phase_trains_exactly_its_parameters(params, method, phase):
    model, cfg = small_model(params, method)
    spec = phase_spec(model, phase, cfg)
    model.train()
    x = torch.randn(2, 3, 40, 40)
    y = torch.randint(0, 3, (2, 40, 40))
    loss_fn = group_loss(cfg.train) if phase.startswith("group") else stage1_loss(cfg.train)
    loss_fn(model, x, y).backward()
    assert grad_owners(model) == set(TRAINS[phase])
    in_optimizer = {id(p) for g in spec.groups for p in g["params"]}
    intended = {id(p) for name in TRAINS[phase] for p in model.param_groups()[name]}
    assert in_optimizer == intended
    # the frozen ones do not even require grad
    frozen = [p for name, ps in model.param_groups().items() if name not in TRAINS[phase] for p in ps]
    assert not any(p.requires_grad for p in frozen)


def test_joint_phase_learning_rates_and_weight_decay_follow_the_paper(params):
    cfg = load_config(params, dataset="pascal", method="scaleprotoseg")
    with torch.device("meta"):
        model = build_for(cfg, 21, offline=True)
    spec = phase_spec(model, "joint", cfg)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in spec.groups for p in g["params"]}
    assert by_param[id(model.prototypes.vectors)] == (2.5e-4, 0.0)
    assert by_param[id(model.aspp.branches[0].weight)] == (2.5e-4, 5e-4)
    assert by_param[id(next(model.backbone.parameters()))] == (2.5e-5, 5e-4)  # the stem conv
    bn = [p for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert bn and not any(id(p) in by_param for p in bn)  # frozen BatchNorm is in no optimiser group
    assert spec.poly_power == 0.9 and cfg.train.batch_size * cfg.train.accumulation == 10
    warm = phase_spec(model, "warmup", cfg)
    assert warm.poly_power == 0.0 and len(warm.groups) == 2
    fine = phase_spec(model, "finetune", cfg)
    assert fine.groups[0]["lr"] == 1e-5 and fine.groups[0]["params"] == [model.last_layer]


PAPER = {  # dataset: (classes, protoseg P, scaleprotoseg P, ws, js, fs, L1, MSC)
    "pascal": (21, 210, 252, 15000, 150000, 30000, 1e-4, (0.5, 0.75)),
    "cityscapes": (19, 190, 228, 15000, 150000, 10000, 1e-4, ()),
    "ade20k": (150, 1800, 1800, 30000, 300000, 20000, 1e-5, ()),
    "coco_stuff": (182, 2184, 2184, 6000, 100000, 4000, 1e-5, (0.5, 0.75)),
    "em": (2, 20, 24, 0, 10000, 10000, 1e-4, ()),
}
GROUPS = {  # dataset: (warm-up, joint, L1, entropy)
    "pascal": (10000, 150000, 1e-3, 0.05),
    "cityscapes": (10000, 150000, 1e-3, 0.05),
    "ade20k": (10000, 150000, 1e-4, 0.25),
    "coco_stuff": (2000, 30000, 1e-4, 0.25),
    "em": (0, 10000, 1e-4, 0.05),
}


@pytest.mark.parametrize("dataset", sorted(PAPER))
@pytest.mark.parametrize("method", METHODS)
def test_paper_presets_build_model_and_optimiser(params, dataset, method):
    K, p_ps, p_sps, ws, js, fs, l1, msc = PAPER[dataset]
    cfg = load_config(params, dataset=dataset, method=method)
    assert cfg.model.msc_scales == msc
    assert cfg.model.aspp_rates == (6, 12, 18, 24)
    # shapes only (meta device: no memory, no weights, no download); the group head reads the class table,
    # which needs real tensors
    with torch.device("cpu" if method == "scaleprotoseg_groups" else "meta"):
        model = build_for(cfg, K, offline=True)
    if method == "deeplab":
        groups = model.param_groups()
        make_optimizer(cfg.train.optimizer, [{"params": groups["trunk"], "lr": cfg.train.lr},
                                             {"params": groups["head"], "lr": cfg.train.lr * cfg.train.head_lr_mult}])
        return
    P = model.prototypes.num_prototypes
    if method == "scaleprotoseg_groups":
        gw, gj, gl1, ent = GROUPS[dataset]
        t = cfg.train
        assert (t.warmup_steps, t.joint_steps, t.loss_l1, t.loss_entropy, t.groups) == (gw, gj, gl1, ent, 3)
        assert (t.loss_ce, t.poly_power, cfg.project.threshold) == (1.0, 0.9, 0.05)
        assert P == p_sps and tuple(model.group_head.weight.shape) == (K, 3, P // K)
        spec = phase_spec(model, "group_joint", cfg)
    else:
        t = cfg.train
        assert P == (p_ps if method == "protoseg" else p_sps)
        pj = cfg.project
        assert (t.warmup_steps, t.joint_steps, pj.finetune_steps, t.loss_l1, t.loss_kld) == (ws, js, fs, l1, 0.25)
        assert (t.loss_ce, t.weight_decay, t.poly_power, t.features) == (1.0, 5e-4, 0.9, 64)
        assert (pj.prune, pj.prune_k, pj.prune_threshold) == (method == "protoseg", 6, 3)
        assert model.prototypes.dim == 64
        spec = phase_spec(model, "joint", cfg)
    make_optimizer("adam", spec.groups)


@pytest.mark.parametrize("methods,groups,match", [
    (["deeplab", "protoseeg"], [], "experiment.methods: unknown entry 'protoseeg'"),
    (["deeplab"], ["scaleprotoseg_groups"], "add scaleprotoseg to experiment.methods"),
    (["deeplab", "scaleprotoseg_groups"], [], "it goes in experiment.groups"),
    ({"deeplab": {"after": "src/scaleprotoseg/models"}}, [], "experiment.methods must be a list"),
    (["deeplab", "deeplab"], [], "lists a method twice"),
    ([], [], "experiment.methods is empty"),
])
def test_bad_method_settings_name_the_key(params, methods, groups, match):
    params["experiment"]["methods"] = methods
    params["experiment"]["groups"] = groups
    with pytest.raises(ConfigError, match=match):
        load_config(params, method="deeplab")


def test_exponent_without_dot_gets_a_yaml_hint(params):
    params["presets"]["embedded"]["project_scaleprotoseg"]["lr_last_layer"] = "1e-05"
    with pytest.raises(ConfigError, match=r"presets.embedded.project_scaleprotoseg.lr_last_layer.*1.0e-5"):
        load_config(params, method="scaleprotoseg")


# ---------------------------------------------------------------------------------------------------------
# EM (the released em/module_em.py and em/module_multiscale_em.py) and projection rules per preset


@pytest.mark.parametrize("method", ["protoseg", "scaleprotoseg"])
def test_em_joint_trains_the_whole_unet_and_aspp_at_the_features_lr(params, method):
    """The released EM modules put every parameter of the features (U-Net, its BatchNorm, ASPP) in one
    group at joint_optimizer_lr_features = 1e-4 with weight decay 5e-4: no 10× ASPP rate, and no name
    filter that could miss the U-Net."""
    cfg = load_config(params, dataset="em", method=method)
    with torch.device("meta"):
        model = build_for(cfg, 2, offline=True)
    spec = phase_spec(model, "joint", cfg)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in spec.groups for p in g["params"]}
    features = list(model.backbone.parameters()) + list(model.aspp.parameters())
    bn = [p for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert bn and len(features) > 20
    assert all(by_param.get(id(p)) == (1e-4, 5e-4) for p in features)
    assert by_param[id(model.prototypes.vectors)] == (1e-4, 0.0)
    assert id(model.last_layer) not in by_param
    assert not cfg.model.freeze_bn and spec.poly_power == 0.9
    t = cfg.train
    assert (t.lr_warmup_aspp, t.lr_warmup_prototypes, cfg.project.lr_last_layer) == (2.5e-4, 2.5e-4, 1e-5)


def test_em_groups_learning_rates_are_the_released_configs(params):
    """group_scaleproto_em.gin: warm_optimizer_lr_group_projection 2.5e-4 (unused: EM runs no group warm-up),
    joint_optimizer_lr_group_projection and last_layer_optimizer_lr 5e-5 — kept as released even where unused,
    so that turning the warm-up on gives the paper code's schedule."""
    g = load_config(params, dataset="em", method="scaleprotoseg_groups").train
    assert g.warmup_steps == 0
    assert (g.lr_warmup_groups, g.lr_joint_groups, g.lr_joint_head) == (2.5e-4, 5e-5, 5e-5)


@pytest.mark.parametrize("dataset,protoseg_rule", [
    ("pascal", "any"), ("cityscapes", "any"), ("em", "any"), ("ade20k", "nearest"), ("coco_stuff", "nearest"),
])
def test_projection_rule_per_preset(params, dataset, protoseg_rule):
    """ProtoSeg's released push.py (Pascal, Cityscapes, EM) uses any pixel of the cell; its faster
    push_optimization.py (ADE20K, COCO-Stuff) and every ScaleProtoSeg push use the nearest-downsampled cell."""
    assert load_config(params, dataset=dataset, method="protoseg").project.rule == protoseg_rule
    assert load_config(params, dataset=dataset, method="scaleprotoseg").project.rule == "nearest"


def test_unknown_projection_rule_names_the_key(params):
    params["presets"]["embedded"]["project_protoseg"]["rule"] = "majority"
    with pytest.raises(ConfigError, match=r"presets.embedded.project_protoseg.rule.*nearest.*any"):
        load_config(params, method="protoseg")


# ---------------------------------------------------------------------------------------------------------
# the logged loss is the released total: CE + KLD + L1 in every stage-1 phase


def naive_off_class_l1(weight, owner):
    total = 0.0
    for k in range(weight.shape[0]):
        for p in range(weight.shape[1]):
            if int(owner[p]) != k:
                total += abs(float(weight[k, p]))
    return total


@pytest.mark.parametrize("method", ["protoseg", "scaleprotoseg"])
@pytest.mark.parametrize("phase", ["warmup", "joint", "finetune"])
@pytest.mark.slow  # a real step per method and phase
def test_stage1_logged_loss_is_ce_plus_kld_plus_l1(params, method, phase):
    from scaleprotoseg.losses import kld_loss, pixel_cross_entropy
    from scaleprotoseg.training.loop import run_phase

    model, cfg = small_model(params, method)
    t = cfg.train
    with torch.no_grad():
        model.last_layer.add_(0.3 * torch.randn_like(model.last_layer))  # make L1 clearly non-zero
    spec = phase_spec(model, phase, cfg)
    model.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 40, 40, generator=g), torch.randint(0, 3, (2, 40, 40), generator=g)
    out = model(x)
    out = out if isinstance(out, list) else [out]
    p = model.prototypes
    ce = sum(pixel_cross_entropy(o["logits"], y) for o in out) / len(out)
    kld = sum(kld_loss(o["distances"], y, p.proto_class, p.proto_scale, 3, per_scale=model.multiscale) for o in out) / len(out)
    l1 = naive_off_class_l1(model.last_layer.detach(), p.proto_class)
    assert l1 > 0.1 and float(kld.detach()) > 0
    want = t.loss_ce * float(ce.detach()) + t.loss_kld * float(kld.detach()) + t.loss_l1 * l1
    assert float(stage1_loss(t)(model, x, y).detach()) == pytest.approx(want, rel=1e-5)
    # ... and exactly that total is what the loop logs for the step
    logged = {}
    run_phase(model, phase=phase, steps=1, accumulation=1, optimizer=make_optimizer("adam", spec.groups),
              loss_fn=stage1_loss(t), make_loader=lambda start: [(x, y)], device=torch.device("cpu"),
              log_every=1, logger=lambda step, m: logged.update(m), progress=False)
    assert logged[f"{phase}/loss"] == pytest.approx(want, rel=1e-5)
