"""params.yaml's layers: the paper presets merge shared blocks (YAML anchors in `paper`, `<<: *name`), and what
every stage reads is unchanged by how the file is written.

tests/fixtures/params_resolved.json was produced from params.yaml as it was before its shared paper settings were
written once as anchors (every preset section written out in full). A deliberate change of a preset's value
updates that JSON in the same commit (regenerate it with `_resolved(read_params("params.yaml"))`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from scaleprotoseg import config
from scaleprotoseg.config import load_config, read_params, resolved_sections
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.paths import repo_root
from scaleprotoseg.schema import build
from scaleprotoseg.sections import EmbeddedConfig

FROZEN = Path(__file__).parent / "fixtures" / "params_resolved.json"


def _plain(x):
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def _resolved(params: dict) -> dict:
    """Every preset's resolved sections and every dataset × method's full configuration, as JSON values."""
    return _plain({
        "resolved_sections": {ds: resolved_sections(params, ds) for ds in params["presets"]},
        "load_config": {f"{ds}/{m}": load_config(params, ds, m).to_dict()
                        for ds in params["presets"] for m in config.METHODS},
    })


def _differences(a, b, where=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


def test_every_resolved_preset_is_as_frozen():
    frozen = json.loads(FROZEN.read_text())
    now = _resolved(read_params(repo_root() / "params.yaml"))
    assert set(now["load_config"]) == set(frozen["load_config"])  # every dataset × method, none added or lost
    assert len(frozen["load_config"]) == len(frozen["resolved_sections"]) * len(config.METHODS) >= 7 * 4
    assert _differences(frozen, now) == []


def test_paper_presets_merge_the_shared_blocks(params):
    """The merge is the loader's: each preset section holds plain values, and nothing in config reads `paper`."""
    assert params["presets"]["cityscapes"]["model"] == params["paper"]["model"]
    assert params["presets"]["coco_stuff"]["runtime"] == {**params["paper"]["runtime"], "val_every": 2000}
    for ds in ("pascal", "cityscapes", "ade20k", "coco_stuff", "em"):
        scale, proto = params["presets"][ds]["scaleprotoseg"], params["presets"][ds]["protoseg"]
        assert {k: v for k, v in proto.items() if k != "prototypes"} == scale  # only the prototype count differs
    without = {k: v for k, v in params.items() if k != "paper"}
    assert _resolved(without) == _resolved(params)


def test_a_bare_alias_of_a_section_is_refused(tmp_path):
    text = (repo_root() / "params.yaml").read_text()
    merged = "    eval: {<<: *paper_eval}\n"
    assert merged in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(merged, "    eval: *paper_eval\n", 1))
    with pytest.raises(ConfigError, match=r"presets\.pascal\.eval is an alias of paper\.eval.*<<: \*name"):
        read_params(path)
    path.write_text(text)
    read_params(path)


def test_dvc_set_param_keeps_the_merges_and_changes_only_its_key(tmp_path):
    """`dvc exp run -S` rewrites params.yaml through dvc.utils.hydra.apply_overrides (a ruamel round trip): the
    anchors and `<<:` stay, every merged key is written out beside them with its value unchanged, and only the
    overridden key changes. Overriding a `paper` block changes no preset (as params.yaml's header says)."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    before = read_params(path)
    hydra.apply_overrides(path, ["presets.pascal.scaleprotoseg.warmup_steps=123", "paper.eval.batch_size=5"])
    after = read_params(path)
    text = path.read_text()
    assert "<<: *paper_model" in text and "&pascal_stage1" in text
    assert after["paper"]["eval"]["batch_size"] == 5
    before["paper"]["eval"]["batch_size"] = 5
    before["presets"]["pascal"]["scaleprotoseg"]["warmup_steps"] = 123
    assert _differences(before, after) == []
    assert after["presets"]["pascal"]["protoseg"]["warmup_steps"] == 15000  # the merge of the edited section


def test_dataclass_defaults_equal_params_yaml(params):
    """A dataclass default (used when a key is omitted, e.g. in an older checkpoint's configuration) is the value
    params.yaml writes in `defaults` (and `embedded`): one number, not two that can drift apart."""
    tables = [(cls, f"defaults.{name}", params["defaults"][name]) for name, cls in (
        ("data", config.DataConfig), ("model", config.ModelConfig), ("runtime", config.RuntimeConfig),
        ("eval", config.EvalConfig), *config.TRAIN_SECTIONS.items(),
        *((f"project_{m}", cls) for m, cls in config.PROJECT_SECTIONS.items()))]
    tables.append((EmbeddedConfig, "embedded", params["embedded"]))
    checked = 0
    for cls, where, written in tables:
        built = build(cls, written, where)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                assert f.name in written, f"{where}.{f.name}: the dataclass has a default, params.yaml does not write it"
                assert getattr(built, f.name) == f.default, f"{where}.{f.name}: params.yaml and {cls.__name__} differ"
                checked += 1
    assert checked >= 10 + 5  # EmbeddedConfig's ten and the preset sections' optional keys


def test_a_small_float_written_back_by_dvc_is_a_number(tmp_path):
    """`dvc exp run -S …lr_joint_trunk=1e-5` writes `1e-05`: DVC reads a number, and so does read_params."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root() / "params.yaml", path)
    hydra.apply_overrides(path, ["presets.pascal.scaleprotoseg.lr_joint_trunk=1e-5"])
    assert "lr_joint_trunk: 1e-05" in path.read_text()
    assert load_config(read_params(path), "pascal", "scaleprotoseg").train.lr_joint_trunk == 1e-5
