"""Hostile params at the pipeline level: values DVC pastes into shell commands never reach a shell, and a
config error stops `dvc repro` in the first stage (`check`), before DVC deletes any stage's outputs —
checked with the check itself and with DVC on a tiny copy of the repository."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from scaleprotoseg.closure import module_closure
from scaleprotoseg.config import set_key
from scaleprotoseg.errors import ConfigError
from scaleprotoseg.stages import check
from scaleprotoseg.stages.smoke import DVC_TINY

from ..repo_copy import copy_repository
from .test_dvc_pipeline import ROOT, SEED, dvc, needs_dvc

INJECTIONS = ("$(touch {x})1", "`touch {x}`", "; touch {x}", "' ; touch {x} ; '")
KEYS = ("seeds", "methods", "dataset")


def hostile(params: dict, key: str, value: str) -> dict:
    params = yaml.safe_load(yaml.safe_dump(params))
    params["experiment"][key] = value if key == "dataset" else [value]
    return params


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("template", INJECTIONS)
def test_the_check_refuses_shell_text_in_every_interpolated_value_naming_the_key(tmp_path, key, template):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(hostile(params, key, template.format(x=tmp_path / "X"))))
    with pytest.raises(ConfigError, match=rf"experiment\.{key}\b.*plain name or number"):
        check.check(path)
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("change,match", [
    ({"seeds": ["7"]}, r"experiment\.seeds must be a non-empty list of non-negative integers"),
    ({"methods": ["resnet"]}, r"experiment\.methods: unknown entry 'resnet'"),
    ({"dataset": "imagenet"}, r"experiment\.dataset is 'imagenet'; presets exist"),
    ({"export": ["deeplab"]}, r"experiment\.export is \['deeplab'\] but embedded has no evaluation server"),
])
def test_the_check_refuses_unknown_names_and_non_integer_seeds(tmp_path, change, match):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["experiment"].update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=match):
        check.check(tmp_path / "params.yaml")


def test_the_check_loads_every_method_and_seed_and_writes_a_constant_stamp(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["experiment"]["seeds"] = [1, 2]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    runs = check.check(tmp_path / "params.yaml")
    assert runs == [(m, s) for m in params["experiment"]["methods"] + params["experiment"]["groups"] for s in (1, 2)]
    # a section only one method reads is checked, whichever stage would read it
    params["presets"]["embedded"]["project_scaleprotoseg_groups"]["threshold"] = 2.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"project_scaleprotoseg_groups\.threshold"):
        check.check(tmp_path / "bad.yaml")
    stamp = tmp_path / "stamp"
    assert check.main(["--params", str(tmp_path / "params.yaml"), "--stamp", str(stamp)]) == 0
    first = stamp.read_bytes()
    params["presets"]["embedded"]["project_scaleprotoseg_groups"]["threshold"] = 0.1
    params["experiment"]["seeds"] = [3]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert check.main(["--params", str(tmp_path / "params.yaml"), "--stamp", str(stamp)]) == 0
    assert stamp.read_bytes() == first  # valid params: the stamp never changes, so nothing downstream re-runs
    assert check.main(["--params", str(tmp_path / "bad.yaml"), "--stamp", str(stamp)]) == 1


def test_every_stage_depends_on_the_check_and_quotes_what_dvc_interpolates():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    first = stages["check"]
    assert first["cmd"].split()[-1] == "scaleprotoseg.stages.check" and "${" not in first["cmd"]
    code = {ROOT / d for d in first["deps"] if d.startswith("src/")}
    assert code == set(module_closure("scaleprotoseg.stages.check"))
    assert next(iter(first["outs"][0])) == check.STAMP
    for name, body in stages.items():
        if name == "check":
            continue
        assert check.STAMP in body["deps"], f"{name} does not depend on the check"
        for word in body["cmd"].split():
            if "${" in word:
                assert re.fullmatch(r"'[^']*'", word), f"{name}: {word} is not single-quoted"


# ---------------------------------------------------------------------------------------------------------
# DVC itself


def tiny_copy(tmp_path: Path) -> Path:
    repo = copy_repository(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in DVC_TINY.items():
        set_key(params, key, value)
    params["experiment"].update(methods=["deeplab"], groups=[], device="cpu", seeds=[SEED])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    return repo


@pytest.mark.slow  # starts a subprocess
@needs_dvc
def test_dvc_runs_no_injected_command_and_names_the_key(tmp_path):
    repo = tiny_copy(tmp_path)
    original = yaml.safe_load((repo / "params.yaml").read_text())
    for i, (key, template) in enumerate((k, t) for k in KEYS for t in INJECTIONS):
        marker = tmp_path / f"pwned-{i}"
        (repo / "params.yaml").write_text(yaml.safe_dump(hostile(original, key, template.format(x=marker)), sort_keys=False))
        out = dvc("repro", cwd=repo, check=False)
        assert out.returncode != 0 and not marker.exists(), (key, template, out.stdout)
        assert re.search(rf"params\.yaml refused.*experiment\.{key}\b", out.stdout + out.stderr), out.stdout + out.stderr
        assert "Running stage 'prepare'" not in out.stdout
    (repo / "params.yaml").write_text(yaml.safe_dump(original, sort_keys=False))
    marker = tmp_path / "pwned-exp"  # an experiment's override from the command line (a CI job) is no different
    out = dvc("exp", "run", "-S", f"experiment.dataset=x;touch {marker}", "prepare", cwd=repo, check=False)
    assert out.returncode != 0 and not marker.exists() and "experiment.dataset" in out.stdout + out.stderr


def digest(repo: Path) -> dict[str, str]:
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("reports", "artifacts") for p in sorted((repo / top).rglob("*")) if p.is_file()}


@needs_dvc
@pytest.mark.slow
def test_a_config_error_stops_dvc_before_it_deletes_any_output(tmp_path):
    repo = tiny_copy(tmp_path)
    dvc("repro", f"evaluate@deeplab-{SEED}", cwd=repo)
    before = digest(repo)
    assert f"reports/evaluate/embedded/deeplab/seed-{SEED}/summary.json" in before and check.STAMP in before
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["presets"]["embedded"]["eval"]["n_examples"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", cwd=repo, check=False)
    assert out.returncode != 0
    assert re.search(r"params\.yaml refused.*eval\.n_examples must be", out.stdout + out.stderr), out.stdout + out.stderr
    assert digest(repo) == before  # byte-identical: no stage after the check ran, none lost an output
    params["presets"]["embedded"]["eval"]["n_examples"] = 1  # fixed again: the check passes and re-runs nothing
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", f"evaluate@deeplab-{SEED}", cwd=repo)
    assert digest(repo) == before
    assert "up to date" in dvc("status", f"evaluate@deeplab-{SEED}", cwd=repo).stdout
