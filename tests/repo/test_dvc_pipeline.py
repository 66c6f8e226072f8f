"""dvc.yaml: the stage graph, code dependencies that match what each stage runs, and fine-grained
invalidation checked with DVC itself on a tiny run in a copy of the repository."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scaleprotoseg.closure import module_closure
from scaleprotoseg.config import set_key
from scaleprotoseg.paths import repo_root
from scaleprotoseg.stages.layout import LAYOUT
from scaleprotoseg.stages.smoke import DVC_TINY
from scaleprotoseg.stages.table import STAGES
from scaleprotoseg.tools.dvc_deps import notebook_imports, regenerate

from ..repo_copy import copy_repository

ROOT = repo_root(Path(__file__).parent)
SRC = ROOT / "src"
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
needs_dvc = pytest.mark.skipif(DVC is None, reason="dvc is not installed")


def dvc(*args, cwd=ROOT, check=True, timeout=600):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # papermill
    out = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert out.returncode == 0, f"dvc {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


SEED = yaml.safe_load((ROOT / "params.yaml").read_text())["experiment"]["seeds"][0]


@needs_dvc
@pytest.mark.slow  # runs dvc dag
def test_dvc_graph_has_every_stage_per_seed_and_the_groups_start_from_scaleprotoseg_of_their_seed():
    text = dvc("dag", "--dot").stdout
    for m in ("deeplab", "protoseg", "scaleprotoseg"):
        for stage in ("train", "project", "evaluate", "interpret"):
            assert f"{stage}@{m}-{SEED}" in text
    for stage in ("groups", "project_groups", "evaluate_groups", "interpret_groups"):
        assert f"{stage}@scaleprotoseg_groups-{SEED}" in text
    assert "export@" not in text  # the embedded dataset has no evaluation server
    assert f"\"project@scaleprotoseg-{SEED}\" -> \"groups@scaleprotoseg_groups-{SEED}\"" in text
    assert f"\"groups@scaleprotoseg_groups-{SEED}\" -> \"project_groups@scaleprotoseg_groups-{SEED}\"" in text
    assert f"\"prepare\" -> \"train@deeplab-{SEED}\"" in text and "report" in text


# ---------------------------------------------------------------------------------------------------------
# code dependencies


def stage_definitions():
    """(stage name, notebook, code deps under src/) for every stage of dvc.yaml (foreach bodies once)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in spec.items():
        if name == "check":  # runs a module, not a notebook: tests/test_hostile_pipeline.py checks its deps
            continue
        body = st.get("do", st)
        nb = next(w for w in body["cmd"].split() if w.endswith(".ipynb") and w.startswith("notebooks/"))
        code = [d for d in body["deps"] if isinstance(d, str) and d.startswith("src/")]
        yield name, ROOT / nb, code


def test_code_deps_of_dvc_yaml_are_current():
    """dvc.yaml's src/ deps are generated (`python -m scaleprotoseg.tools.dvc_deps --write`): each stage
    depends on exactly the import closure of its notebook, so none is forgotten and editing unrelated code
    re-runs nothing."""
    text = (ROOT / "dvc.yaml").read_text()
    assert regenerate(text, ROOT) == text, "dvc.yaml is stale: run `python -m scaleprotoseg.tools.dvc_deps --write`"


@pytest.mark.parametrize("name,notebook,code", list(stage_definitions()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_stage_depends_on_code_it_cannot_run(name, notebook, code):
    """An independent check of the generated deps: every listed file is one the notebook's imports reach,
    and every file they reach is listed."""
    closure = {f for m in notebook_imports(notebook) for f in module_closure(m)}
    assert closure, f"{notebook.name} imports nothing from scaleprotoseg"
    listed = {f for d in code for f in ((ROOT / d).rglob("*.py") if (ROOT / d).is_dir() else [ROOT / d])}
    assert listed == closure, sorted(f.relative_to(ROOT).as_posix() for f in listed ^ closure)


def _notebook_path_params(notebook: Path, name: str) -> dict[str, str]:
    """{path key: notebook parameter} of the notebook's `context.stage(name, paths={...})` call."""
    code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    call = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "stage"
                and n.args and getattr(n.args[0], "value", None) == name)
    paths = next(k.value for k in call.keywords if k.arg == "paths")
    return {k.value: v.id for k, v in zip(paths.keys, paths.values)}


DVC_VARS = {"dataset": "${experiment.dataset}", "method": "${item.method}", "seed": "${item.seed}", "start": "scaleprotoseg"}


@pytest.mark.parametrize("name", [n for n, s in STAGES.items() if s.dvc], ids=str)
def test_dvc_yaml_runs_each_stage_of_the_table_with_its_folders(name):
    """Every stage of the stage table is in dvc.yaml under the names it lists, running its notebook with each
    path parameter set to the table's layout folder, inputs as deps and outputs as outs (or holding them)."""
    spec = STAGES[name]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = _notebook_path_params(ROOT / "notebooks" / spec.notebook, name)
    for dvc_name in spec.dvc:
        body = stages[dvc_name]
        words = [w.strip("'") for w in body["cmd"].split()]  # interpolated words are single-quoted
        assert f"notebooks/{spec.notebook}" in words
        given = {words[i + 1]: words[i + 2] for i, w in enumerate(words[:-2]) if w == "-p"}
        deps = [d for d in body["deps"] if isinstance(d, str)]
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in body["outs"] + body.get("metrics", []) + body.get("plots", [])]
        for key, lkey in spec.paths.items():
            folder = LAYOUT[lkey].format(**DVC_VARS)
            assert given.get(params[key]) == folder, f"{dvc_name}: -p {params[key]} should be {folder}"
            if key in spec.inputs:
                assert folder in deps, f"{dvc_name}: {folder} is an input but not a dependency"
            else:
                assert any(o == folder or o.startswith(folder + "/") for o in outs), f"{dvc_name}: nothing of {folder} is an output"


@pytest.mark.parametrize("name,notebook,code", [s for s in stage_definitions() if s[0] in ("train", "groups", "project")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_figures_report_export_and_interpretability_code_are_no_dependency_of_training_or_projection(name, notebook, code):
    closure = {f.relative_to(SRC / "scaleprotoseg").as_posix() for m in notebook_imports(notebook) for f in module_closure(m)}
    for f in ("plots.py", "explain/maps.py", "explain/__init__.py", "interpretability.py", "export.py", "stages/report.py", "stages/interpret.py",
              "stages/export.py", "stages/evaluate.py"):
        assert f not in closure, f"{name} runs {f}"


@pytest.mark.slow  # one python -c per stage
def test_the_import_closure_holds_what_python_actually_loads():
    """An independent check of `module_closure`: the scaleprotoseg modules Python loads when importing a
    stage module are all in its closure (the closure also holds imports inside functions)."""
    for stage in ("train", "project", "prepare", "report"):
        code = (f"import sys, scaleprotoseg.stages.{stage}; print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
                f"if n.split('.')[0] == 'scaleprotoseg' and getattr(m, '__file__', None)))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        loaded = {Path(p).resolve() for p in out.stdout.split()}
        closure = set(module_closure(f"scaleprotoseg.stages.{stage}"))
        assert loaded and loaded <= closure, sorted(str(p) for p in loaded - closure)


PKG = SRC / "scaleprotoseg"

# The package's floors, top to bottom: every import goes to a module of its own floor or of a floor below.
# A module's floor is that of the first name matching it (a package's name covers its modules).
FLOORS = (
    ("tools.scaling", "tools.rehearse"),  # measure the stages themselves (their layout, their functions)
    ("stages",),  # what the notebooks run
    ("explain", "tools", "import_official", "predict", "package", "model_card"),  # explanations, the entry points
    # run by hand, the released weights, model packages
    ("training", "released", "interpretability", "projection", "export", "plots"),
    ("models", "data", "metrics", "losses", "evaluation"),
    ("config", "schema", "sections", "errors", "paths", "atomic", "progress", "device", "closure", "artifacts",
     "stage_metrics", ""),  # leaf modules ("": the package's own __init__.py)
)


def package_modules(pkg: Path = PKG) -> dict[str, Path]:
    return {".".join((pkg.name, *p.relative_to(pkg).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in pkg.rglob("*.py")}


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """module → the package modules it imports: at module level or inside a function, and through
    `importlib.import_module` with a literal name (an f-string with a literal prefix: every module it can
    name). `from m import x` counts as an import of m.x when that is a module, else of m; the parent
    packages that Python initialises on the way are not counted."""
    modules = package_modules(pkg)
    graph = {}
    for name, p in modules.items():
        package = name if p.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                deps |= {f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names}
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    deps.add(arg.value)
                elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                    deps |= {m for m in modules if m.startswith(arg.values[0].value)}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each import that closes one (depth-first search)."""
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return cycles


def floor(module: str) -> int:
    rel = module.removeprefix("scaleprotoseg").removeprefix(".")
    for i, names in enumerate(FLOORS):
        if any(rel == n or rel.startswith(n + ".") for n in names if n) or (rel == "" and "" in names):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if floor(d) < floor(m))


def test_no_source_file_over_400_lines_and_no_import_cycle():
    long = {p.relative_to(PKG).as_posix(): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
    graph = import_graph()
    assert graph["scaleprotoseg.stages.context"] >= {"scaleprotoseg.stages.smoke", "scaleprotoseg.stages.table"}  # importlib seen
    assert "scaleprotoseg.models.prototypes" in graph["scaleprotoseg.explain.maps"]  # imported inside a function
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_import_goes_down_or_sideways_a_floor():
    graph = import_graph()
    assert not upward_imports(graph), upward_imports(graph)


def test_the_import_checks_see_function_level_and_importlib_imports(tmp_path):
    """The checks above on a made-up package: a cycle closed inside a function, one through an importlib
    f-string, and an import running up a floor."""
    pkg = tmp_path / "scaleprotoseg"
    (pkg / "stages").mkdir(parents=True)
    files = {"__init__.py": "", "errors.py": "def f():\n    from .models import build\n",
             "models/__init__.py": "", "models/build.py": "from ..errors import f\n",
             "stages/__init__.py": "", "stages/a.py": "import importlib\n"
             "def g(n):\n    return importlib.import_module(f'scaleprotoseg.stages.{n}')\n",
             "stages/b.py": "from .a import g\n"}
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg)
    cycles = {frozenset(c) for c in import_cycles(graph)}
    assert cycles == {frozenset({"scaleprotoseg.errors", "scaleprotoseg.models.build"}),
                      frozenset({"scaleprotoseg.stages.a", "scaleprotoseg.stages.b"})}
    assert upward_imports(graph) == ["scaleprotoseg.errors -> scaleprotoseg.models.build"]


# ---------------------------------------------------------------------------------------------------------
# DVC itself on a tiny run in a copy of the repository (the sizes: stages/smoke.py's DVC_TINY)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A git copy of the repository with tiny settings in which DVC has run train, groups and project."""
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in DVC_TINY.items():
        set_key(params, key, value)
    params["experiment"].update(methods=["deeplab", "scaleprotoseg"], device="cpu", seeds=[SEED])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = ["-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["init", "-q"], ["add", "-A"], [*env, "commit", "-qm", "tiny"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    dvc("repro", f"train@deeplab-{SEED}", f"project_groups@scaleprotoseg_groups-{SEED}", cwd=repo)
    return repo


UPSTREAM = ("prepare", f"train@deeplab-{SEED}", f"train@scaleprotoseg-{SEED}", f"project@scaleprotoseg-{SEED}",
            f"groups@scaleprotoseg_groups-{SEED}", f"project_groups@scaleprotoseg_groups-{SEED}")


def changed_stages(repo, stages=UPSTREAM) -> set[str]:
    out = json.loads(dvc("status", "--json", *stages, cwd=repo).stdout or "{}")
    return set(out)


@needs_dvc
@pytest.mark.slow
def test_editing_figure_or_report_code_leaves_training_and_projection_up_to_date(tiny_repo):
    assert changed_stages(tiny_repo) == set()
    for f in ("src/scaleprotoseg/plots.py", "src/scaleprotoseg/stages/report.py", "src/scaleprotoseg/interpretability.py"):
        p = tiny_repo / f
        original = p.read_text()
        p.write_text(original + "\n# an edit\n")
        try:
            assert changed_stages(tiny_repo) == set(), f
        finally:
            p.write_text(original)
    p = tiny_repo / "src/scaleprotoseg/projection.py"
    original = p.read_text()
    p.write_text(original + "\n# an edit\n")
    try:
        # the stages that run projection code; what follows re-runs only if their outputs change
        assert changed_stages(tiny_repo) == {f"project@scaleprotoseg-{SEED}", f"project_groups@scaleprotoseg_groups-{SEED}"}
    finally:
        p.write_text(original)


@needs_dvc
@pytest.mark.slow
def test_changing_the_group_threshold_reruns_only_the_thresholding(tiny_repo):
    params_path = tiny_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["presets"]["embedded"]["project_scaleprotoseg_groups"]["threshold"] = 0.1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert changed_stages(tiny_repo) == {f"project_groups@scaleprotoseg_groups-{SEED}"}
        params["presets"]["embedded"]["runtime"]["log_every"] = 5  # a run-time knob: nothing re-runs
        del params["presets"]["embedded"]["project_scaleprotoseg_groups"]["threshold"]
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        assert changed_stages(tiny_repo) == set()
    finally:
        params_path.write_text(original)


@needs_dvc
@pytest.mark.slow
def test_exp_run_temp_trains_with_the_experiments_params(tiny_repo):
    """`dvc exp run --temp` runs the stage in a copy of the repository: the override must reach training."""
    assert json.loads((tiny_repo / f"artifacts/train/embedded/deeplab/seed-{SEED}/train_summary.json").read_text())["steps"] == 1
    dvc("exp", "run", "--temp", "-S", "presets.embedded.deeplab.steps=3", f"train@deeplab-{SEED}", cwd=tiny_repo)
    # the workspace itself is untouched by the temporary experiment ...
    assert json.loads((tiny_repo / f"artifacts/train/embedded/deeplab/seed-{SEED}/train_summary.json").read_text())["steps"] == 1
    # ... and the experiment trained with its own override
    (name,) = dvc("exp", "list", "--name-only", cwd=tiny_repo).stdout.split()
    dvc("exp", "apply", name, cwd=tiny_repo, check=False)  # (stages this tiny run never ran cannot be checked out)
    assert yaml.safe_load((tiny_repo / "params.yaml").read_text())["presets"]["embedded"]["deeplab"]["steps"] == 3
    assert json.loads((tiny_repo / f"artifacts/train/embedded/deeplab/seed-{SEED}/train_summary.json").read_text())["steps"] == 3


@needs_dvc
@pytest.mark.slow
def test_adding_a_seed_adds_its_stages_and_reruns_nothing_already_done(tiny_repo):
    params_path = tiny_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["experiment"]["seeds"] = [SEED, 7]
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert changed_stages(tiny_repo) == set()  # every stage of the first seed stays up to date
        new = {"train@deeplab-7", "train@scaleprotoseg-7", "project@scaleprotoseg-7", "groups@scaleprotoseg_groups-7"}
        assert new <= changed_stages(tiny_repo, tuple(new))
        text = dvc("dag", "--dot", cwd=tiny_repo).stdout
        assert "\"project@scaleprotoseg-7\" -> \"groups@scaleprotoseg_groups-7\"" in text
        assert f"\"project@scaleprotoseg-{SEED}\" -> \"groups@scaleprotoseg_groups-7\"" not in text
    finally:
        params_path.write_text(original)
