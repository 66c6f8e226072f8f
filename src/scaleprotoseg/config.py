"""Configuration: params.yaml → frozen dataclasses, with every key checked — the one place that validates
parameters.

params.yaml is the only place a number is written. `load_config(params, dataset, method)` resolves the
`experiment` section and, for the dataset's preset, every section as `defaults.<section>` with
`presets.<dataset>.<section>` on top, and returns a `RunConfig`. The paper presets merge shared blocks
(YAML anchors in the top-level `paper` section, `<<: *paper_model`): the YAML loader resolves them, so this
module sees each preset section with its values written out and never reads `paper` itself. Unknown keys, missing keys, wrong types and
out-of-range values raise `ConfigError` naming the full key (e.g. `presets.embedded.deeplab.steps`) and the
fix. Below this module no function reads YAML, environment variables or the working directory.

Sections and who reads them: `data`, `model`, `<method>` (training), `project_<method>` (the project stage
only: projection, fine-tuning, pruning, the groups' threshold), `eval`, and `runtime` (how a run is carried
out — logging, checkpoint and validation intervals, workers — never part of a fingerprint).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import build, check_keys, section, typed
from .sections import (  # noqa: F401 (re-exported: the section dataclasses are part of this module's API)
    PROJECTION_RULES,
    DataConfig,
    DataSourceConfig,
    EmbeddedConfig,
    EvalConfig,
    GroupTrainConfig,
    ModelConfig,
    NoProjectConfig,
    ProjectConfig,
    PrototypeTrainConfig,
    RuntimeConfig,
    ThresholdConfig,
    TrainConfig,
)

STAGE1_METHODS = ("deeplab", "protoseg", "scaleprotoseg")  # trained from the backbone
GROUP_METHODS = ("scaleprotoseg_groups",)  # ScaleProtoSeg's stage 2
METHODS = STAGE1_METHODS + GROUP_METHODS
PROTOTYPE_METHODS = ("protoseg", "scaleprotoseg", "scaleprotoseg_groups")
STARTS_FROM = {"scaleprotoseg_groups": "scaleprotoseg"}  # its training starts from that method's projected model
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# experiment keys with a default: how training is carried out (precision changes the numbers; the
# launcher keys do not, up to float round-off: the global batch is the same on any number of processes)
EXPERIMENT_DEFAULTS = {"precision": "auto", "gpus": 1, "nodes": 1, "rdzv_endpoint": "localhost:29400", "rdzv_timeout": 900}
LAUNCH_KEYS = ("device", "gpus", "nodes", "rdzv_endpoint", "rdzv_timeout")  # where and on how many processes: not what is computed


TRAIN_SECTIONS = {
    "deeplab": TrainConfig,
    "protoseg": PrototypeTrainConfig,
    "scaleprotoseg": PrototypeTrainConfig,
    "scaleprotoseg_groups": GroupTrainConfig,
}
PROJECT_SECTIONS = {
    "deeplab": NoProjectConfig,
    "protoseg": ProjectConfig,
    "scaleprotoseg": ProjectConfig,
    "scaleprotoseg_groups": ThresholdConfig,
}
PRESET_SECTIONS = ("data", "model", "runtime", *METHODS, *(f"project_{m}" for m in METHODS), "eval")


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
    project: NoProjectConfig | ProjectConfig | ThresholdConfig
    eval: EvalConfig
    runtime: RuntimeConfig
    extra: dict = field(default_factory=dict)  # the dataset's generator section (embedded), for checks
    start: RunConfig | None = None  # the method this one starts from (scaleprotoseg_groups: scaleprotoseg)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (training's autocast of the trunk and ASPP)
    gpus: int = 1  # training processes per node (torchrun --nproc_per_node)
    nodes: int = 1  # machines (torchrun --nnodes)
    rdzv_endpoint: str = "localhost:29400"  # host:port of node 0, where the nodes meet (torchrun --rdzv-endpoint)
    rdzv_timeout: int = 900  # seconds the stage waits for every process to meet before it gives up

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, sections: tuple[str, ...], code: str) -> str:
        """A short hash of the named sections and of `code` (the version of the code that computes them,
        `closure.code_version`): whether a resume state or a finished phase belongs to this run."""
        d = self.to_dict()
        d = {k: d[k] for k in sections}
        if d.get("start"):  # the start model's own run-time knobs are not part of what it computed either
            d["start"] = {k: v for k, v in d["start"].items() if k not in ("runtime", *LAUNCH_KEYS)}
        d["__code__"] = code
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RunConfig:
        """Rebuild from `to_dict()` output (as stored in checkpoints)."""
        return RunConfig(
            dataset=d["dataset"],
            method=d["method"],
            seed=d["seed"],
            device=d["device"],
            data=build(DataConfig, d["data"], "data"),
            model=build(ModelConfig, d["model"], "model"),
            train=build(TRAIN_SECTIONS[d["method"]], d["train"], "train"),
            project=build(PROJECT_SECTIONS[d["method"]], d["project"], "project"),
            eval=build(EvalConfig, d["eval"], "eval"),
            runtime=build(RuntimeConfig, d["runtime"], "runtime"),
            extra=dict(d.get("extra", {})),
            start=RunConfig.from_dict(d["start"]) if d.get("start") else None,
            **{k: d.get(k, v) for k, v in EXPERIMENT_DEFAULTS.items()},
        )


# --------------------------------------------------------------------------------------------------------
# loading


def read_params(path: str | Path) -> dict:
    """params.yaml as DVC reads it: YAML merges resolved, and `1e-05` a number (YAML 1.2, as DVC's loader and
    `dvc exp run -S`, which writes small floats so, have it; PyYAML alone would read text)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run from the repository root or pass params_path.")
    try:
        params = yaml.load(path.read_text(), Loader=Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections.")
    _refuse_aliased_mappings(params, path)
    return params


def _refuse_aliased_mappings(params: dict, path: Path) -> None:
    """A bare YAML alias of a mapping (`eval: *paper_eval`) makes one object of two places: `dvc exp run -S`
    on one of them rewrites the other too, or loses the override. A merge (`eval: {<<: *paper_eval}`) makes a
    mapping of its own."""
    seen: dict[int, str] = {}

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            return
        if id(node) in seen:
            raise ConfigError(f"{path}: {where} is an alias of {seen[id(node)]} (`*name`): write `{{<<: *name}}` "
                              "to merge the block into a mapping of its own.")
        seen[id(node)] = where
        for key, value in node.items():
            walk(value, f"{where}.{key}" if where else str(key))

    walk(params, "")


def set_key(params: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested dict (as `dvc exp run -S a.b.c=value` does). A preset section may
    gain any key that `defaults` has in that section."""
    node = params
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise ConfigError(f"Override {dotted!r}: {k!r} is not a section of params.yaml.")
        node = node[k]
    valid = set(node)
    if len(keys) == 4 and keys[0] == "presets":
        valid |= set((params.get("defaults") or {}).get(keys[2]) or {})
    if keys[-1] not in valid:
        raise ConfigError(f"Override {dotted!r}: no key {keys[-1]!r}; valid: {sorted(valid)}.")
    node[keys[-1]] = value


def load_config(
    params: str | Path | Mapping[str, Any],
    dataset: str | None = None,
    method: str = "deeplab",
    overrides: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> RunConfig:
    """Resolve params.yaml (path or already-loaded dict) for one dataset, method and seed (one of
    `experiment.seeds`; None: the first)."""
    params = copy.deepcopy(dict(params)) if isinstance(params, Mapping) else read_params(params)
    for key, value in (overrides or {}).items():
        set_key(params, key, value)
    exp = section(params, "experiment")
    dataset = dataset or exp.get("dataset")
    presets = section(params, "presets")
    if dataset not in presets:
        raise ConfigError(f"Unknown dataset {dataset!r} (experiment.dataset); presets exist for {sorted(presets)}.")
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; valid methods: {list(METHODS)}.")
    if "seed" in exp and "seeds" not in exp:
        raise ConfigError("experiment.seed is now experiment.seeds, a list: every method runs once per seed "
                          f"(write `seeds: [{exp['seed']}]`).")
    check_keys(exp, {"dataset", "methods", "groups", "seeds", "export", "device", *EXPERIMENT_DEFAULTS}, "experiment")
    method_names(params)  # the fan-out is checked whichever stage runs
    seeds = seed_list(params)
    export_names(params, dataset)
    if seed is None:
        seed = seeds[0]
    elif typed(seed, int, "seed") not in seeds:
        raise ConfigError(f"seed {seed} is not in experiment.seeds {seeds}: add it there (each seed is a run).")
    device = exp["device"]
    if device not in DEVICES:
        raise ConfigError(f"experiment.device is {device!r}; choose one of {list(DEVICES)}.")
    launch = {k: exp.get(k, v) for k, v in EXPERIMENT_DEFAULTS.items()}
    if launch["precision"] not in PRECISIONS:
        raise ConfigError(f"experiment.precision is {launch['precision']!r}; choose one of {list(PRECISIONS)}.")
    for key in ("gpus", "nodes", "rdzv_timeout"):
        launch[key] = typed(launch[key], int, f"experiment.{key}")
        if launch[key] < 1:
            raise ConfigError(f"experiment.{key} must be at least 1, got {launch[key]}.")
    if not isinstance(launch["rdzv_endpoint"], str) or ":" not in launch["rdzv_endpoint"]:
        raise ConfigError(f"experiment.rdzv_endpoint must be 'host:port', got {launch['rdzv_endpoint']!r}.")

    sections = resolved_sections(params, dataset)
    where = f"presets.{dataset}"
    start = load_config(params, dataset=dataset, method=STARTS_FROM[method], seed=seed) if method in STARTS_FROM else None
    made = {}
    for name, cls in (("data", DataConfig), ("model", ModelConfig), ("runtime", RuntimeConfig), ("eval", EvalConfig),
                      (method, TRAIN_SECTIONS[method]), (f"project_{method}", PROJECT_SECTIONS[method])):
        # name the key where the user wrote it: the preset when it sets this section, else defaults
        at = f"{where}.{name}" if params["presets"][dataset][name] else f"defaults.{name}"
        made[name] = build(cls, sections[name], at)
        made[name].check(at)
    cfg = RunConfig(dataset=dataset, method=method, seed=seed, device=device, data=made["data"], model=made["model"],
                    train=made[method], project=made[f"project_{method}"], eval=made["eval"], runtime=made["runtime"],
                    extra=dict(params.get(dataset, {}) or {}), start=start, **launch)
    _check_crop_fits(cfg, where)
    finetune = getattr(cfg.project, "finetune_steps", 0)
    if 0 < finetune < cfg.train.accumulation:
        raise ConfigError(f"{where}.project_{method}.finetune_steps ({finetune}) is smaller than {where}.{method}."
                          f"accumulation ({cfg.train.accumulation}): fine-tuning would never update the last layer.")
    processes = launch["gpus"] * launch["nodes"]
    if processes > 1 and cfg.train.batch_size % processes:
        raise ConfigError(
            f"{where}.{method}.batch_size ({cfg.train.batch_size}) is the global batch of a step, shared by the "
            f"{processes} training processes (experiment.gpus × experiment.nodes): it must be divisible by {processes}.")
    return cfg


def resolved_sections(params: Mapping, dataset: str) -> dict[str, dict]:
    """Every section of `dataset`'s preset: `defaults.<section>` with `presets.<dataset>.<section>` on top."""
    defaults = section(params, "defaults")
    preset = section(section(params, "presets"), dataset, f"presets.{dataset}")
    check_keys(defaults, set(PRESET_SECTIONS), "defaults")
    missing = [name for name in PRESET_SECTIONS if name not in preset]
    if missing:
        raise ConfigError(f"presets.{dataset}: missing section(s) {missing}; write `{missing[0]}: {{}}` for \"as in "
                          "defaults\" (DVC tracks each section of the running preset, so every preset names them all).")
    check_keys(preset, set(PRESET_SECTIONS), f"presets.{dataset}")
    out = {}
    for name in PRESET_SECTIONS:
        base = section(defaults, name, f"defaults.{name}")
        top = section(preset, name, f"presets.{dataset}.{name}")
        unknown = set(top) - set(base)
        if unknown:
            raise ConfigError(f"presets.{dataset}.{name}: unknown key(s) {sorted(unknown)}; valid keys (from "
                              f"defaults.{name}): {sorted(base)}.")
        out[name] = {**base, **top}
    return out


def method_names(params: Mapping) -> list[str]:
    """Every method that runs, checked: `experiment.methods` (trained from the backbone) then
    `experiment.groups` (ScaleProtoSeg's stage 2, which needs scaleprotoseg)."""
    exp = section(params, "experiment")
    methods, groups = exp.get("methods"), exp.get("groups", [])
    for key, value, allowed in (("methods", methods, STAGE1_METHODS), ("groups", groups, GROUP_METHODS)):
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            raise ConfigError(f"experiment.{key} must be a list of names from {list(allowed)}, got {value!r}.")
        for m in value:
            if m not in allowed:
                hint = " (it goes in experiment.groups)" if m in GROUP_METHODS else (
                    " (it goes in experiment.methods)" if m in STAGE1_METHODS else "")
                raise ConfigError(f"experiment.{key}: unknown entry {m!r}{hint}; valid: {list(allowed)}.")
        if len(set(value)) != len(value):
            raise ConfigError(f"experiment.{key} lists a method twice: {value}.")
    if not methods:
        raise ConfigError("experiment.methods is empty: list at least one of " f"{list(STAGE1_METHODS)}.")
    for g in groups:
        if STARTS_FROM[g] not in methods:
            raise ConfigError(f"experiment.groups lists {g}, which starts from {STARTS_FROM[g]}: add {STARTS_FROM[g]} "
                              "to experiment.methods (or set experiment.groups: []).")
    return list(methods) + list(groups)


def seed_list(params: Mapping) -> list[int]:
    """`experiment.seeds`, checked: a non-empty list of distinct integers. Every method runs once per seed
    (its initialisation, data order, augmentation and diagnostics derive from it; data preparation does not)."""
    seeds = section(params, "experiment").get("seeds")
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"experiment.seeds must be a non-empty list of non-negative integers, got {seeds!r} "
                          "(e.g. `seeds: [20220227]`; the paper reports mean ± std over three).")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"experiment.seeds lists a seed twice: {seeds}.")
    return list(seeds)


# datasets whose test split has an evaluation server (the export stage writes its submission format)
EXPORT_DATASETS = ("pascal", "cityscapes")


def export_names(params: Mapping, dataset: str | None = None) -> list[str]:
    """`experiment.export`, checked: the methods whose test-set predictions are exported for the evaluation
    server. Only datasets with a server have an export (an empty list runs no export stage)."""
    exp = section(params, "experiment")
    names, dataset = exp.get("export", []), dataset or exp.get("dataset")
    if not isinstance(names, list) or not all(isinstance(m, str) for m in names):
        raise ConfigError(f"experiment.export must be a list of method names, got {names!r}.")
    run = method_names(params)
    for m in names:
        if m not in run:
            raise ConfigError(f"experiment.export lists {m!r}, which does not run (experiment.methods / groups: {run}).")
    if names and dataset not in EXPORT_DATASETS:
        raise ConfigError(f"experiment.export is {names} but {dataset} has no evaluation server (only "
                          f"{list(EXPORT_DATASETS)} do): set `experiment.export: []`.")
    return list(names)


def data_source(params: Mapping, dataset: str) -> DataSourceConfig:
    """`data_sources.<dataset>`, checked (types included: `skip_corrupt: "false"` is refused, not read as true)."""
    where = f"data_sources.{dataset}"
    spec = build(DataSourceConfig, section(section(params, "data_sources"), dataset, where), where)
    spec.check(where)
    return spec


def embedded_spec(params: Mapping) -> EmbeddedConfig:
    """The `embedded` section, checked (the generator checks the combinations it needs)."""
    return build(EmbeddedConfig, section(params, "embedded"), "embedded")


def _check_crop_fits(cfg: RunConfig, where: str) -> None:
    """For the embedded dataset the image size is a parameter: a crop larger than it is a mistake."""
    size = cfg.extra.get("image_size")
    if cfg.dataset == "embedded" and isinstance(size, int):
        if cfg.data.crop > size:
            raise ConfigError(
                f"{where}.data.crop ({cfg.data.crop}) is larger than the embedded images allow "
                f"({size} px, embedded.image_size); lower the crop or raise the image size."
            )
