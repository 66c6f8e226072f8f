"""Every `dvc exp run` of the README works as written: its `-S` overrides go through DVC's own override code
(`dvc.utils.hydra.apply_overrides`, what `dvc exp run -S` calls) on a copy of params.yaml, the result is a
valid configuration for every method, and the stages it names exist."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest
import yaml

from scaleprotoseg.config import load_config, method_names, read_params, seed_list
from scaleprotoseg.paths import repo_root

ROOT = repo_root()


def readme_commands(prefix: str = "dvc exp run") -> list[str]:
    """The README's shell commands starting with `prefix`: in ```bash blocks (continuation lines joined) and
    in inline code."""
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(prefix):
                out.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL).replace("\n", " ")
    inline = [c.strip() for c in re.findall(r"`(" + re.escape(prefix) + r"[^`]*)`", prose)]
    return out + [c for c in inline if "=" in c and "<" not in c]  # not bare mentions nor `<placeholders>`


def parse(command: str) -> tuple[list[str], list[str]]:
    """(overrides, targets) of a `dvc exp run` command line."""
    words = shlex.split(command)[3:]
    overrides, targets, i = [], [], 0
    while i < len(words):
        if words[i] in ("-S", "--set-param"):
            overrides.append(words[i + 1])
            i += 2
        elif words[i].startswith("-"):
            i += 1
        else:
            targets.append(words[i])
            i += 1
    return overrides, targets


COMMANDS = readme_commands()


def test_the_readme_has_dvc_exp_run_commands():
    assert len(COMMANDS) >= 4 and all(parse(c)[0] for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_works_as_written(tmp_path, command):
    from dvc.utils.hydra import apply_overrides

    overrides, targets = parse(command)
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    apply_overrides(str(params_file), overrides)  # raises as `dvc exp run -S` would
    params = read_params(params_file)
    for method in method_names(params):
        load_config(params, method=method)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for target in targets:
        name, _, item = target.partition("@")
        assert name in stages, f"{command}: no stage {name!r}"
        if item:
            method, _, seed = item.rpartition("-")
            assert method in method_names(params) and int(seed) in seed_list(params), f"{command}: {target}"


def test_a_preset_key_without_plus_plus_is_refused_by_dvc(tmp_path):
    """Why the README writes `++`: DVC refuses to set a key the preset does not list."""
    from dvc.utils.hydra import apply_overrides

    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    with pytest.raises(Exception, match="set-param|not in struct"):
        apply_overrides(str(params_file), ["presets.embedded.deeplab.steps=1200"])
    apply_overrides(str(params_file), ["++presets.embedded.deeplab.steps=1200"])
    assert read_params(params_file)["presets"]["embedded"]["deeplab"]["steps"] == 1200
