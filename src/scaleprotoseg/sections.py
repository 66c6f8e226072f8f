"""One frozen dataclass per section of params.yaml, each with a `check(where)` of its values' ranges
(`config.load_config` builds them; see its docstring for how sections are resolved)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .schema import non_negative, positive

BACKBONES = ("resnet101", "small", "unet")
OPTIMIZERS = ("sgd", "adam")
PROJECTION_RULES = ("nearest", "any")


@dataclass(frozen=True)
class EmbeddedConfig:
    """The generator of the embedded dataset (section `embedded`)."""

    seed: int = 0
    image_size: int = 128  # square images, pixels
    n_train: int = 200
    n_val: int = 50
    n_project: int = 0  # 0 = projection split is the whole train split; else the first n_project train ids
    min_objects: int = 2
    max_objects: int = 4
    min_scale: float = 0.5  # object size factor relative to a base size, log-uniform in [min, max]
    max_scale: float = 2.0  # max/min must be >= 4 by default
    void_width: int = 1  # pixels of void band at object boundaries; 0 disables


@dataclass(frozen=True)
class DataSourceConfig:
    """Where a raw dataset lives and how it is read (section `data_sources.<dataset>`)."""

    root: str
    workers: int = 2
    skip_corrupt: bool = False
    seed: int | None = None  # EM: the slice split; folder: the train/val split when no split lists exist
    max_image_pixels: int | None = None  # images larger than this are refused (None: Pillow's 89.5 M-pixel guard)

    def check(self, where: str) -> None:
        positive(self.workers, f"{where}.workers")
        if self.max_image_pixels is not None:
            positive(self.max_image_pixels, f"{where}.max_image_pixels")


@dataclass(frozen=True)
class DataConfig:
    """How images are augmented and evaluated."""

    crop: int  # training crop side (pixels)
    scale_range: tuple[float, float]  # random rescale factor ~ U(lo, hi) before cropping
    flip: bool  # random horizontal flip in training
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_size: tuple[int, int] | None = None  # resize inputs to (H, W) for evaluation (Pascal: 513×513)
    eval_short_side: int | None = None  # or resize the shorter side (ADE20K: 512); None = native size

    def check(self, where: str) -> None:
        positive(self.crop, f"{where}.crop")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"{where}.scale_range must be [lo, hi] with 0 < lo <= hi, got {list(self.scale_range)}.")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{where}.std must be positive, got {list(self.std)}.")
        if self.eval_size is not None and min(self.eval_size) <= 0:
            raise ConfigError(f"{where}.eval_size must be null or two positive ints, got {self.eval_size}.")
        if self.eval_size is not None and self.eval_short_side is not None:
            raise ConfigError(f"{where}: set at most one of eval_size and eval_short_side.")
        if self.eval_short_side is not None:
            positive(self.eval_short_side, f"{where}.eval_short_side")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and ASPP. `resnet101` is the paper's DeepLab-v2 trunk; `small` is the CPU default."""

    backbone: str
    width: int  # channels of the first stage of the `small` backbone (ignored by resnet101)
    pretrained: bool  # ImageNet weights for resnet101 (needs a download or pretrained_path)
    pretrained_path: str | None
    aspp_rates: tuple[int, ...]
    freeze_bn: bool  # BatchNorm frozen to its (ImageNet) statistics, as in the paper
    msc_scales: tuple[float, ...] = ()  # extra input scales for multi-scale inputs (Pascal: 0.5, 0.75)

    def check(self, where: str) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"{where}.backbone is {self.backbone!r}; choose one of {list(BACKBONES)}.")
        positive(self.width, f"{where}.width")
        if not self.aspp_rates or any(r <= 0 for r in self.aspp_rates):
            raise ConfigError(f"{where}.aspp_rates must be a non-empty list of positive ints, got {self.aspp_rates}.")
        if any(not 0 < s < 1 for s in self.msc_scales):
            raise ConfigError(f"{where}.msc_scales must lie in (0, 1), got {list(self.msc_scales)}.")


@dataclass(frozen=True)
class RuntimeConfig:
    """How a run is carried out, never what it computes: not part of any fingerprint."""

    num_workers: int  # data-loading processes
    log_every: int  # mini-batches between logged losses
    checkpoint_every: int  # mini-batches between resume checkpoints
    val_every: int  # validation mIoU every N mini-batches; 0 = only at the end of a phase
    val_images: int  # validation images used during training: a seeded subset (0 = all)

    def check(self, where: str) -> None:
        for k in ("log_every", "checkpoint_every"):
            positive(getattr(self, k), f"{where}.{k}")
        for k in ("num_workers", "val_every", "val_images"):
            non_negative(getattr(self, k), f"{where}.{k}")


def updates_happen(steps: int, accumulation: int, key: str, where: str) -> None:
    """A phase with steps must reach at least one optimiser update (every `accumulation` steps)."""
    if 0 < steps < accumulation:
        raise ConfigError(f"{key} ({steps}) is smaller than {where}.accumulation ({accumulation}): the phase would "
                          "never update the model. Raise the steps or lower the accumulation.")


def check_two_phases(cfg, where: str) -> None:
    """A warm-up + joint schedule: some steps in all, and each phase that runs reaches an update."""
    if cfg.warmup_steps + cfg.joint_steps == 0:
        raise ConfigError(f"{where}: warmup_steps + joint_steps must be > 0.")
    for k in ("warmup_steps", "joint_steps"):
        updates_happen(getattr(cfg, k), cfg.accumulation, f"{where}.{k}", where)


@dataclass(frozen=True)
class TrainConfig:
    """DeepLab's single training phase. Steps count mini-batches, as the paper's configs do."""

    steps: int
    batch_size: int
    accumulation: int  # optimiser update every `accumulation` mini-batches
    optimizer: str  # sgd | adam
    lr: float  # trunk learning rate
    head_lr_mult: float  # ASPP learning rate = lr × this (DeepLab's 10×)
    weight_decay: float
    momentum: float  # SGD only
    poly_power: float  # lr_t = lr·(1 − t/T)^power over optimiser updates; 0 = constant

    def check(self, where: str) -> None:
        for k in ("steps", "batch_size", "accumulation", "lr", "head_lr_mult"):
            positive(getattr(self, k), f"{where}.{k}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{where}.optimizer is {self.optimizer!r}; choose one of {list(OPTIMIZERS)}.")
        for k in ("weight_decay", "momentum", "poly_power"):
            non_negative(getattr(self, k), f"{where}.{k}")
        updates_happen(self.steps, self.accumulation, f"{where}.steps", where)


@dataclass(frozen=True)
class PrototypeTrainConfig:
    """ProtoSeg / ScaleProtoSeg stage 1 (docs/method.md §3–§4): warm-up → joint. Steps count mini-batches;
    learning rates are per optimiser group, as in the paper's configs."""

    prototypes: int  # protoseg: per class (10; 12 on ADE/COCO); scaleprotoseg: per class per scale (3)
    features: int  # channels per ASPP branch = prototype dimension (64)
    batch_size: int
    accumulation: int
    warmup_steps: int  # ASPP + prototypes, trunk frozen, constant LR
    joint_steps: int  # + trunk, poly schedule over optimiser updates
    lr_warmup_aspp: float
    lr_warmup_prototypes: float
    lr_joint_trunk: float
    lr_joint_aspp: float
    lr_joint_prototypes: float
    weight_decay: float  # on trunk and ASPP (never on prototypes or the last layer)
    poly_power: float
    loss_ce: float
    loss_kld: float
    loss_l1: float  # on the off-class weights of the last layer
    released: str | None = None  # the authors' released checkpoint: imported instead of trained

    def check(self, where: str) -> None:
        for k in ("prototypes", "features", "batch_size", "accumulation", "lr_warmup_aspp", "lr_warmup_prototypes",
                  "lr_joint_trunk", "lr_joint_aspp", "lr_joint_prototypes"):
            positive(getattr(self, k), f"{where}.{k}")
        for k in ("warmup_steps", "joint_steps", "weight_decay", "poly_power", "loss_ce", "loss_kld", "loss_l1"):
            non_negative(getattr(self, k), f"{where}.{k}")
        check_two_phases(self, where)


@dataclass(frozen=True)
class GroupTrainConfig:
    """ScaleProtoSeg stage 2 (docs/method.md §2.7, §4): sparse groups on the projected stage-1 model."""

    groups: int  # groups per class (3)
    batch_size: int
    accumulation: int
    warmup_steps: int  # group weights only, constant LR
    joint_steps: int  # group weights + group head, poly schedule
    lr_warmup_groups: float
    lr_joint_groups: float
    lr_joint_head: float
    poly_power: float
    loss_ce: float
    loss_l1: float  # on the off-class weights of the group head
    loss_entropy: float  # normalised entropy of the group-weight rows
    released: str | None = None  # the authors' released checkpoint: imported instead of trained

    def check(self, where: str) -> None:
        for k in ("groups", "batch_size", "accumulation", "lr_warmup_groups", "lr_joint_groups", "lr_joint_head"):
            positive(getattr(self, k), f"{where}.{k}")
        for k in ("warmup_steps", "joint_steps", "poly_power", "loss_ce", "loss_l1", "loss_entropy"):
            non_negative(getattr(self, k), f"{where}.{k}")
        check_two_phases(self, where)


@dataclass(frozen=True)
class NoProjectConfig:
    """DeepLab: nothing to project."""

    def check(self, where: str) -> None:
        pass


@dataclass(frozen=True)
class ProjectConfig:
    """The project stage of ProtoSeg / ScaleProtoSeg (docs/method.md §5)."""

    rule: str  # eligible cells: "nearest" (nearest-downsampled label) or "any" (any label pixel in the cell)
    finetune_steps: int  # last layer only, after projection
    lr_last_layer: float
    prune: bool  # protoseg: prune by k nearest patches, then fine-tune the last layer again
    prune_k: int
    prune_threshold: int

    def check(self, where: str) -> None:
        if self.rule not in PROJECTION_RULES:
            raise ConfigError(f"{where}.rule is {self.rule!r}; choose one of {list(PROJECTION_RULES)}.")
        positive(self.lr_last_layer, f"{where}.lr_last_layer")
        positive(self.prune_k, f"{where}.prune_k")
        non_negative(self.finetune_steps, f"{where}.finetune_steps")
        non_negative(self.prune_threshold, f"{where}.prune_threshold")
        if self.prune_threshold > self.prune_k:
            raise ConfigError(f"{where}.prune_threshold ({self.prune_threshold}) cannot exceed prune_k ({self.prune_k}).")


@dataclass(frozen=True)
class ThresholdConfig:
    """The project stage of the groups: weights below `threshold` are zeroed (no renormalisation)."""

    threshold: float

    def check(self, where: str) -> None:
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"{where}.threshold must lie in [0, 1), got {self.threshold!r}.")


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    n_examples: int  # predictions shown beside ground truth in the evaluation report
    max_images: int  # 0 = the whole validation split
    explorer_images: int = 20  # validation images in the interpret stage's explorer page
    faithfulness_images: int = 4  # seeded validation images of the interpret stage's faithfulness curves (0: none)

    def check(self, where: str) -> None:
        positive(self.batch_size, f"{where}.batch_size")
        non_negative(self.faithfulness_images, f"{where}.faithfulness_images")
        positive(self.explorer_images, f"{where}.explorer_images")
        positive(self.n_examples, f"{where}.n_examples")  # the evaluate stage declares its examples figure
        non_negative(self.max_images, f"{where}.max_images")
