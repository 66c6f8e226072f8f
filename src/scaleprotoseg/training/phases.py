"""Training phases of the prototype methods: which parameters train, at which learning rates, on which loss.

docs/method.md §3 (losses) and §4 (phases):

| phase          | trains                               | schedule | loss                                  |
|----------------|--------------------------------------|----------|---------------------------------------|
| `train`        | DeepLab: trunk, ASPP head (10× LR)   | poly 0.9 | CE (its own optimiser: SGD or Adam)   |
| `warmup`       | ASPP, prototypes                     | constant | CE + KLD + L1                         |
| `joint`        | trunk (lower LR), ASPP, prototypes   | poly 0.9 | CE + KLD + L1                         |
| `finetune`     | last layer                           | constant | CE + KLD + L1                         |
| `group_warmup` | group weights                        | constant | CE + L1 + group entropy               |
| `group_joint`  | group weights, group head            | poly 0.9 | CE + L1 + group entropy               |

Weight decay (coupled L2, as the paper's Adam) applies to the trunk and the ASPP only. Every parameter not in
a phase's optimiser has `requires_grad=False`, so exactly the intended parameters receive gradients.
Every stage-1 phase computes the same total as the released code, CE + KLD + L1 on the off-class weights
of the last layer (each averaged over the MSC outputs), and that total is what is logged: in warm-up and
joint the L1 term has no gradient (the last layer is frozen), in fine-tuning the KLD has none (the
prototypes and features are frozen), yet both are part of the logged loss, so curves compare with the
paper's logs. In the group phases everything up to the similarities is frozen and runs under `no_grad`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import GroupTrainConfig, PrototypeTrainConfig, RunConfig, TrainConfig
from ..losses import kld_loss, msc_mean, pixel_cross_entropy
from ..models.prototypes import log_similarity

STAGE1_PHASES = ("warmup", "joint")
GROUP_PHASES = ("group_warmup", "group_joint")
METHOD_PHASES = {  # what the training stage runs for each method (projection and fine-tuning come after)
    "deeplab": ("train",),
    "protoseg": STAGE1_PHASES,
    "scaleprotoseg": STAGE1_PHASES,
    "scaleprotoseg_groups": GROUP_PHASES,
}
TRAINS = {
    "train": ("trunk", "head"),
    "warmup": ("aspp", "prototypes"),
    "joint": ("trunk", "aspp", "prototypes"),
    "finetune": ("last_layer",),
    "group_warmup": ("group_weights",),
    "group_joint": ("group_weights", "group_head"),
}


LR_KEYS = {  # the learning rates of each phase, as named in params.yaml (fine-tuning: the project section)
    "train": ("lr", "head_lr_mult"),
    "warmup": ("lr_warmup_aspp", "lr_warmup_prototypes"),
    "joint": ("lr_joint_trunk", "lr_joint_aspp", "lr_joint_prototypes"),
    "finetune": ("lr_last_layer",),
    "group_warmup": ("lr_warmup_groups",),
    "group_joint": ("lr_joint_groups", "lr_joint_head"),
}


def lr_keys(cfg: RunConfig, phase: str) -> tuple[str, ...]:
    """Where to lower `phase`'s learning rates: `presets.<dataset>.<section>.<key>`."""
    section = f"project_{cfg.method}" if phase == "finetune" else cfg.method
    return tuple(f"presets.{cfg.dataset}.{section}.{k}" for k in LR_KEYS[phase])


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    steps: int
    groups: list[dict]  # optimiser parameter groups with their lr and weight decay
    poly_power: float
    optimizer: str = "adam"  # the paper's prototype phases use Adam; DeepLab's recipe SGD
    momentum: float = 0.9  # SGD only


def phase_steps(cfg: RunConfig, phase: str) -> int:
    """Mini-batches of `phase` (fine-tuning's count is the project stage's setting)."""
    if phase == "finetune":
        return cfg.project.finetune_steps
    key = {"train": "steps", "warmup": "warmup_steps", "joint": "joint_steps", "group_warmup": "warmup_steps",
           "group_joint": "joint_steps"}[phase]
    return getattr(cfg.train, key)


def phase_spec(model: nn.Module, phase: str, cfg: RunConfig) -> PhaseSpec:
    """Set `requires_grad` for `phase` and return its optimiser groups (the paper's LRs)."""
    t = cfg.train
    params = model.param_groups()
    trains = TRAINS[phase]
    for name, ps in params.items():
        for p in ps:
            p.requires_grad_(name in trains)
    if phase == "train":  # DeepLab: trunk at lr, ASPP head at lr × head_lr_mult (the 10× of DeepLab's recipe)
        groups = [{"params": params["trunk"], "lr": t.lr, "weight_decay": t.weight_decay},
                  {"params": params["head"], "lr": t.lr * t.head_lr_mult, "weight_decay": t.weight_decay}]
        return PhaseSpec(phase, t.steps, groups, t.poly_power, t.optimizer, t.momentum)
    if phase in ("warmup", "joint"):
        warm = phase == "warmup"
        groups = [
            {"params": params["aspp"], "lr": t.lr_warmup_aspp if warm else t.lr_joint_aspp, "weight_decay": t.weight_decay},
            {"params": params["prototypes"], "lr": t.lr_warmup_prototypes if warm else t.lr_joint_prototypes, "weight_decay": 0.0},
        ]
        if not warm:
            groups.insert(0, {"params": [p for p in params["trunk"] if p.requires_grad], "lr": t.lr_joint_trunk,
                              "weight_decay": t.weight_decay})
        steps = t.warmup_steps if warm else t.joint_steps
        return PhaseSpec(phase, steps, groups, 0.0 if warm else t.poly_power)
    if phase == "finetune":
        p = cfg.project
        return PhaseSpec(phase, p.finetune_steps, [{"params": params["last_layer"], "lr": p.lr_last_layer, "weight_decay": 0.0}], 0.0)
    if phase == "group_warmup":
        return PhaseSpec(phase, t.warmup_steps, [{"params": params["group_weights"], "lr": t.lr_warmup_groups, "weight_decay": 0.0}], 0.0)
    if phase == "group_joint":
        return PhaseSpec(phase, t.joint_steps, [
            {"params": params["group_weights"], "lr": t.lr_joint_groups, "weight_decay": 0.0},
            {"params": params["group_head"], "lr": t.lr_joint_head, "weight_decay": 0.0},
        ], t.poly_power)
    raise ValueError(f"unknown phase {phase!r}")


def trunk_frozen(phase: str) -> bool:
    """Phases that do not train the trunk keep its BatchNorm statistics fixed too."""
    return "trunk" not in TRAINS[phase]


def stage1_loss(t: PrototypeTrainConfig):
    """loss_fn(model, images, labels) for warm-up, joint and fine-tuning: CE + KLD + L1 in every phase (the
    released total; averaged over MSC outputs, L1 added once since it does not depend on the output)."""
    with_kld = t.loss_kld > 0

    def one(out, labels, model, classes):
        loss = t.loss_ce * pixel_cross_entropy(out["logits"], labels)
        if with_kld:
            p = model.prototypes
            loss = loss + t.loss_kld * kld_loss(out["distances"], labels, p.proto_class, p.proto_scale,
                                                model.num_classes, per_scale=model.multiscale,
                                                table=p.pair_table(model.multiscale), classes=classes)
        return loss

    def loss_fn(model, images, labels, classes=None):
        outs = model(images)
        outs = outs if isinstance(outs, list) else [outs]
        loss = sum(one(o, labels, model, classes) for o in outs) / len(outs)
        if t.loss_l1 > 0:
            loss = loss + t.loss_l1 * model.off_class_l1()
        return loss

    return loss_fn


def group_loss(t: GroupTrainConfig):
    """loss_fn for the group phases: frozen features under no_grad, then the group head."""

    def loss_fn(model, images, labels, classes=None):
        with torch.no_grad():
            feats = model.features(images)
            feats = feats if isinstance(feats, list) else [feats]
            sims = [log_similarity(model.prototypes.distances(f)) for f in feats]
        gh = model.group_head
        ce = msc_mean(pixel_cross_entropy, [gh(s) for s in sims], labels)
        return t.loss_ce * ce + t.loss_l1 * gh.off_class_l1() + t.loss_entropy * gh.entropy()

    return loss_fn


def deeplab_loss(model, images, labels, classes=None):
    """DeepLab's loss: cross-entropy averaged over the MSC outputs."""
    return msc_mean(pixel_cross_entropy, model(images), labels)


def loss_for(t: TrainConfig | PrototypeTrainConfig | GroupTrainConfig, phase: str):
    """loss_fn(model, images, labels, classes=None) of `phase` (`classes`: `losses.present_classes` of the
    labels, computed by the loader; only the diversity loss uses it)."""
    if phase == "train":
        return deeplab_loss
    if phase in GROUP_PHASES:
        return group_loss(t)
    return stage1_loss(t)
