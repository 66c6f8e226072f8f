"""Configuration: params.yaml → frozen dataclasses, with every key checked.

params.yaml is the only place a number is written. `load_config(params, dataset, method)` resolves the
`experiment` section, the dataset's preset (`presets.<dataset>`: data, model, eval and one training
section per method) and returns a `RunConfig`. Unknown keys, missing keys, wrong types and out-of-range
values raise `ConfigError` naming the full key (e.g. `presets.embedded.deeplab.steps`) and the fix.
Below this module no function reads YAML, environment variables or the working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError

METHODS = ("deeplab", "protoseg", "scaleprotoseg", "scaleprotoseg_groups")
PROTOTYPE_METHODS = ("protoseg", "scaleprotoseg", "scaleprotoseg_groups")
# Training of a method starts either from the backbone's initialisation or from another method's projected
# model; dvc.yaml reads this (experiment.methods.<m>.after) as the dependency of train@<m>.
STARTS_FROM = {"scaleprotoseg_groups": "scaleprotoseg"}
INIT_DEP = "src/scaleprotoseg/models"


def after_dependency(method: str) -> str:
    """The path train@<method> depends on besides the data: its starting model."""
    start = STARTS_FROM.get(method)
    return f"artifacts/project/{start}" if start else INIT_DEP
DEVICES = ("auto", "cpu", "cuda")
BACKBONES = ("resnet101", "small", "unet")
OPTIMIZERS = ("sgd", "adam")
PROJECTION_RULES = ("nearest", "any")


# --------------------------------------------------------------------------------------------------------
# dataclasses (one per params section)


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset lives and how images are augmented and evaluated."""

    crop: int  # training crop side (pixels)
    scale_range: tuple[float, float]  # random rescale factor ~ U(lo, hi) before cropping
    flip: bool  # random horizontal flip in training
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_size: tuple[int, int] | None = None  # resize inputs to (H, W) for evaluation (Pascal: 513×513)
    eval_short_side: int | None = None  # or resize the shorter side (ADE20K: 512); None = native size
    num_workers: int = 0

    def check(self, where: str) -> None:
        _positive(self.crop, f"{where}.crop")
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
            _positive(self.eval_short_side, f"{where}.eval_short_side")
        _non_negative(self.num_workers, f"{where}.num_workers")


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
        _positive(self.width, f"{where}.width")
        if not self.aspp_rates or any(r <= 0 for r in self.aspp_rates):
            raise ConfigError(f"{where}.aspp_rates must be a non-empty list of positive ints, got {self.aspp_rates}.")
        if any(not 0 < s < 1 for s in self.msc_scales):
            raise ConfigError(f"{where}.msc_scales must lie in (0, 1), got {list(self.msc_scales)}.")


@dataclass(frozen=True)
class TrainConfig:
    """One supervised training schedule (DeepLab). Steps count mini-batches, as the paper's configs do."""

    steps: int
    batch_size: int
    accumulation: int  # optimiser update every `accumulation` mini-batches
    optimizer: str  # sgd | adam
    lr: float  # trunk learning rate
    head_lr_mult: float  # ASPP learning rate = lr × this (DeepLab's 10×)
    weight_decay: float
    momentum: float  # SGD only
    poly_power: float  # lr_t = lr·(1 − t/T)^power over optimiser updates; 0 = constant
    log_every: int
    checkpoint_every: int  # resume checkpoint every N mini-batches
    val_every: int  # validation mIoU every N mini-batches; 0 = only at the end
    val_images: int  # how many validation images the in-training validation uses (0 = all)

    def check(self, where: str) -> None:
        _positive(self.steps, f"{where}.steps")
        _positive(self.batch_size, f"{where}.batch_size")
        _positive(self.accumulation, f"{where}.accumulation")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{where}.optimizer is {self.optimizer!r}; choose one of {list(OPTIMIZERS)}.")
        _positive(self.lr, f"{where}.lr")
        _positive(self.head_lr_mult, f"{where}.head_lr_mult")
        _non_negative(self.weight_decay, f"{where}.weight_decay")
        _non_negative(self.momentum, f"{where}.momentum")
        _non_negative(self.poly_power, f"{where}.poly_power")
        _positive(self.log_every, f"{where}.log_every")
        _positive(self.checkpoint_every, f"{where}.checkpoint_every")
        _non_negative(self.val_every, f"{where}.val_every")
        _non_negative(self.val_images, f"{where}.val_images")


@dataclass(frozen=True)
class PrototypeTrainConfig:
    """ProtoSeg / ScaleProtoSeg stage 1 (docs/method.md §3–§5): warm-up → joint → (projection) →
    last-layer fine-tuning, plus ProtoSeg's optional pruning. Steps count mini-batches; learning rates are
    per optimiser group, as in the paper's configs."""

    prototypes: int  # protoseg: per class (10; 12 on ADE/COCO); scaleprotoseg: per class per scale (3)
    features: int  # channels per ASPP branch = prototype dimension (64)
    batch_size: int
    accumulation: int
    warmup_steps: int  # ASPP + prototypes, trunk frozen, constant LR
    joint_steps: int  # + trunk, poly schedule over optimiser updates
    finetune_steps: int  # last layer only, after projection
    lr_warmup_aspp: float
    lr_warmup_prototypes: float
    lr_joint_trunk: float
    lr_joint_aspp: float
    lr_joint_prototypes: float
    lr_last_layer: float
    weight_decay: float  # on trunk and ASPP (never on prototypes or the last layer)
    poly_power: float
    loss_ce: float
    loss_kld: float
    loss_l1: float  # on the off-class weights of the last layer
    prune: bool  # protoseg only: prune by k nearest patches, then fine-tune the last layer again
    prune_k: int
    prune_threshold: int
    log_every: int
    checkpoint_every: int
    val_every: int
    val_images: int
    # Which feature cells a prototype may be projected onto: "nearest" (the cell's nearest-downsampled label
    # is its class; ScaleProtoSeg, ProtoSeg on ADE20K/COCO-Stuff) or "any" (any full-resolution label pixel
    # in the cell is its class; the released ProtoSeg push on Pascal VOC, Cityscapes and EM).
    projection_rule: str = "nearest"

    def check(self, where: str) -> None:
        if self.projection_rule not in PROJECTION_RULES:
            raise ConfigError(f"{where}.projection_rule is {self.projection_rule!r}; choose one of {list(PROJECTION_RULES)}.")
        for k in ("prototypes", "features", "batch_size", "accumulation", "log_every", "checkpoint_every",
                  "prune_k", "lr_warmup_aspp", "lr_warmup_prototypes", "lr_joint_trunk", "lr_joint_aspp",
                  "lr_joint_prototypes", "lr_last_layer"):
            _positive(getattr(self, k), f"{where}.{k}")
        for k in ("warmup_steps", "joint_steps", "finetune_steps", "weight_decay", "poly_power", "loss_ce",
                  "loss_kld", "loss_l1", "val_every", "val_images", "prune_threshold"):
            _non_negative(getattr(self, k), f"{where}.{k}")
        if self.warmup_steps + self.joint_steps == 0:
            raise ConfigError(f"{where}: warmup_steps + joint_steps must be > 0.")
        if self.prune_threshold > self.prune_k:
            raise ConfigError(f"{where}.prune_threshold ({self.prune_threshold}) cannot exceed prune_k ({self.prune_k}).")


@dataclass(frozen=True)
class GroupTrainConfig:
    """ScaleProtoSeg stage 2 (method.md §2.7, §4): sparse groups on top of the projected stage-1 model."""

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
    threshold: float  # group weights below this are zeroed before evaluation (no renormalisation)
    log_every: int
    checkpoint_every: int
    val_every: int
    val_images: int

    def check(self, where: str) -> None:
        for k in ("groups", "batch_size", "accumulation", "log_every", "checkpoint_every", "lr_warmup_groups",
                  "lr_joint_groups", "lr_joint_head"):
            _positive(getattr(self, k), f"{where}.{k}")
        for k in ("warmup_steps", "joint_steps", "poly_power", "loss_ce", "loss_l1", "loss_entropy", "val_every",
                  "val_images"):
            _non_negative(getattr(self, k), f"{where}.{k}")
        if self.warmup_steps + self.joint_steps == 0:
            raise ConfigError(f"{where}: warmup_steps + joint_steps must be > 0.")
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"{where}.threshold must lie in [0, 1), got {self.threshold!r}.")


TRAIN_SECTIONS = {
    "deeplab": TrainConfig,
    "protoseg": PrototypeTrainConfig,
    "scaleprotoseg": PrototypeTrainConfig,
    "scaleprotoseg_groups": GroupTrainConfig,
}


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int
    n_examples: int  # predictions shown beside ground truth in the evaluation report
    max_images: int  # 0 = the whole validation split

    def check(self, where: str) -> None:
        _positive(self.batch_size, f"{where}.batch_size")
        _non_negative(self.n_examples, f"{where}.n_examples")
        _non_negative(self.max_images, f"{where}.max_images")


@dataclass(frozen=True)
class RunConfig:
    """Everything one method's stages need, resolved from params.yaml."""

    dataset: str
    method: str
    seed: int
    device: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig | PrototypeTrainConfig | GroupTrainConfig
    eval: EvalConfig
    extra: dict = field(default_factory=dict)  # the dataset's generator section (embedded), for checks
    start: "RunConfig | None" = None  # the method this one starts from (scaleprotoseg_groups: scaleprotoseg)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none) and of the package's source code, to tell
        whether a resume state or a finished phase belongs to this run: a changed config or changed code
        starts afresh."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        d["__code__"] = code_version()
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "RunConfig":
        """Rebuild from `to_dict()` output (as stored in checkpoints)."""
        return RunConfig(
            dataset=d["dataset"],
            method=d["method"],
            seed=d["seed"],
            device=d["device"],
            data=_build(DataConfig, d["data"], "data"),
            model=_build(ModelConfig, d["model"], "model"),
            train=_build(TRAIN_SECTIONS[d["method"]], d["train"], "train"),
            eval=_build(EvalConfig, d["eval"], "eval"),
            extra=dict(d.get("extra", {})),
            start=RunConfig.from_dict(d["start"]) if d.get("start") else None,
        )


def code_version() -> str:
    """A hash of every .py file of the package (what a resumed run must share with the run it continues)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# loading


def read_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run from the repository root or pass params_path.")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections.")
    return params


def set_key(params: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested dict (as `dvc exp run -S a.b.c=value` does)."""
    node = params
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise ConfigError(f"Override {dotted!r}: {k!r} is not a section of params.yaml.")
        node = node[k]
    if keys[-1] not in node:
        raise ConfigError(f"Override {dotted!r}: no key {keys[-1]!r}; valid: {sorted(node)}.")
    node[keys[-1]] = value


def load_config(
    params: str | Path | Mapping[str, Any],
    dataset: str | None = None,
    method: str = "deeplab",
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Resolve params.yaml (path or already-loaded dict) for one dataset and method."""
    params = copy.deepcopy(dict(params)) if isinstance(params, Mapping) else read_params(params)
    for key, value in (overrides or {}).items():
        set_key(params, key, value)
    exp = _section(params, "experiment")
    dataset = dataset or exp.get("dataset")
    presets = _section(params, "presets")
    if dataset not in presets:
        raise ConfigError(
            f"Unknown dataset {dataset!r} (experiment.dataset); presets exist for {sorted(presets)}."
        )
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r} (experiment.methods); valid methods: {list(METHODS)}.")
    _check_keys(exp, {"dataset", "methods", "seed", "device"}, "experiment")
    methods = method_names(params)
    seed = _typed(exp["seed"], int, "experiment.seed")
    device = exp["device"]
    if device not in DEVICES:
        raise ConfigError(f"experiment.device is {device!r}; choose one of {list(DEVICES)}.")

    where = f"presets.{dataset}"
    preset = _section(presets, dataset, where)
    _check_keys(preset, {"data", "model", "eval", *METHODS}, where, required={"data", "model", "eval", method})
    start = None
    if method in STARTS_FROM:
        start = load_config(params, dataset=dataset, method=STARTS_FROM[method])
    cfg = RunConfig(
        dataset=dataset,
        method=method,
        seed=seed,
        device=device,
        data=_build(DataConfig, preset["data"], f"{where}.data"),
        model=_build(ModelConfig, preset["model"], f"{where}.model"),
        train=_build(TRAIN_SECTIONS[method], preset[method], f"{where}.{method}"),
        eval=_build(EvalConfig, preset["eval"], f"{where}.eval"),
        extra=dict(params.get(dataset, {}) or {}),
        start=start,
    )
    for name in ("data", "model", "train", "eval"):
        key = {"train": method}.get(name, name)
        getattr(cfg, name).check(f"{where}.{key}")
    _check_crop_fits(cfg, where)
    return cfg


def method_names(params: Mapping) -> list[str]:
    """The methods of the fan-out, checked: `experiment.methods` maps each method to `{after: <path>}`."""
    methods = _section(params, "experiment").get("methods")
    example = "{deeplab: {after: %s}}" % INIT_DEP
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"experiment.methods must map method names to {{after: <path>}}, e.g. {example}; got {methods!r}.")
    for m, spec in methods.items():
        if m not in METHODS:
            raise ConfigError(f"Unknown method {m!r} in experiment.methods; valid methods: {list(METHODS)}.")
        want = after_dependency(m)
        if not isinstance(spec, dict) or spec.get("after") != want:
            raise ConfigError(f"experiment.methods.{m} must be {{after: {want}}} (the dependency dvc.yaml gives train@{m}); got {spec!r}.")
        start = STARTS_FROM.get(m)
        if start and start not in methods:
            raise ConfigError(f"experiment.methods lists {m}, which starts from {start}: add {start} to experiment.methods too.")
    return list(methods)


def _check_crop_fits(cfg: RunConfig, where: str) -> None:
    """For the embedded dataset the image size is a parameter: a crop larger than it is a mistake."""
    size = cfg.extra.get("image_size")
    if cfg.dataset == "embedded" and isinstance(size, int):
        if cfg.data.crop > size:
            raise ConfigError(
                f"{where}.data.crop ({cfg.data.crop}) is larger than the embedded images allow "
                f"({size} px, embedded.image_size); lower the crop or raise the image size."
            )


# --------------------------------------------------------------------------------------------------------
# typed construction with clear errors


def _section(parent: Mapping, key: str, where: str | None = None) -> dict:
    where = where or key
    if key not in parent:
        raise ConfigError(f"params.yaml has no section {where!r}.")
    value = parent[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}.")
    return value


def _check_keys(d: Mapping, valid: set[str], where: str, required: set[str] | None = None) -> None:
    unknown = set(d) - valid
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(valid)}.")
    missing = (valid if required is None else required) - set(d)
    if missing:
        raise ConfigError(f"{where}: missing key(s) {sorted(missing)}; add them to params.yaml.")


def _typed(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, tuple[...], X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(value, inner, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}.")
        return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str) and value.strip().lower().lstrip("+-").replace(".", "", 1).replace("e", "", 1).replace("-", "", 1).isdigit():
            raise ConfigError(f"{where} must be a number, got the text {value!r}: YAML reads exponents without a "
                              f"decimal point as text; write e.g. 1.0e-5 instead of 1e-5.")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


def _build(cls: type, d: Any, where: str):
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {d!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    _check_keys(d, set(fields), where, required=required)
    return cls(**{k: _typed(v, hints[k], f"{where}.{k}") for k, v in d.items()})


def _positive(value: float, where: str) -> None:
    if not value > 0:
        raise ConfigError(f"{where} must be > 0, got {value!r}.")


def _non_negative(value: float, where: str) -> None:
    if value < 0:
        raise ConfigError(f"{where} must be >= 0, got {value!r}.")
