"""The stage table: the one place that says, for every stage notebook, which package function it runs and
which folders it reads and writes.

Read by `context.stage` (a notebook's default paths, and the inputs that must exist), smoke mode (which
upstream artifacts to build first, with the same functions), the tests (one notebook per entry; `dvc.yaml`
runs each notebook with exactly these folders) and `python -m scaleprotoseg.closure --write` (the code each
DVC stage depends on: the import closure of its notebook). How to add a stage: README, "How to add a stage".

Paths are named by a short key (`data`, `train`, `out`…) that maps to a `layout.LAYOUT` key. The stage
function takes them as keyword arguments by convention: `data` → `data_root`, `start` → `start_checkpoint`
(its `model.pt`), any other key → `<key>_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class StageSpec:
    notebook: str                                         # under notebooks/
    module: str | None                                    # scaleprotoseg.stages.<module>
    function: str | None                                  # the function that does the stage's work
    inputs: dict[str, str] = field(default_factory=dict)  # path key → layout key, read
    outputs: dict[str, str] = field(default_factory=dict)  # path key → layout key, written
    optional: tuple[str, ...] = ()                        # inputs that may be absent (the others must exist)
    dvc: tuple[str, ...] = ()                             # the dvc.yaml stages that run it; (): run by hand
    fan_in: bool = False                                  # reads every method's and seed's evaluation

    @property
    def paths(self) -> dict[str, str]:
        return {**self.inputs, **self.outputs}

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(k for k in self.inputs if k not in self.optional)


STAGES: dict[str, StageSpec] = {
    "prepare": StageSpec("10_prepare_data.ipynb", "prepare", "prepare_dataset",
                         outputs={"data": "prepared", "report": "prepare_reports"}, dvc=("prepare",)),
    "train": StageSpec("20_train.ipynb", "train", "train", inputs={"data": "prepared"},
                       outputs={"out": "train", "report": "train_reports"}, dvc=("train",)),
    "project": StageSpec("30_project_prototypes.ipynb", "project", "project",
                         inputs={"data": "prepared", "train": "train"},
                         outputs={"out": "project", "report": "project_reports"}, dvc=("project", "project_groups")),
    "groups": StageSpec("35_groups.ipynb", "train", "train", inputs={"data": "prepared", "start": "start_project"},
                        outputs={"out": "train", "report": "train_reports"}, dvc=("groups",)),
    "evaluate": StageSpec("40_evaluate.ipynb", "evaluate", "evaluate_stage",
                          inputs={"data": "prepared", "train": "train", "project": "project"},
                          outputs={"report": "evaluate_reports"}, dvc=("evaluate", "evaluate_groups")),
    "interpret": StageSpec("50_interpret.ipynb", "interpret", "interpret",
                           inputs={"data": "prepared", "project": "project", "deeplab": "deeplab_train"},
                           outputs={"report": "interpret_reports"}, optional=("deeplab",),
                           dvc=("interpret", "interpret_groups")),
    "package": StageSpec("55_package.ipynb", "package", "package",
                         inputs={"train": "train", "project": "project", "evaluate": "evaluate_reports",
                                 "interpret": "interpret_reports"},
                         outputs={"out": "package"}, optional=("interpret",), dvc=("package", "package_groups")),
    "report": StageSpec("60_report.ipynb", "report", "write_report", outputs={"report": "report"}, dvc=("report",),
                        fan_in=True),
    "export": StageSpec("70_export.ipynb", "export", "export",
                        inputs={"data": "prepared", "train": "train", "project": "project"},
                        outputs={"out": "export"}, dvc=("export",)),
    # Not a pipeline stage: explains any image with the models of the interpret and evaluate stages.
    "explain": StageSpec("80_explain.ipynb", None, None),
}

# The order in which smoke mode builds one method's artifacts (each needs the ones before it).
CHAIN = ("train", "project", "evaluate_reports")


def spec(name: str) -> StageSpec:
    if name not in STAGES:
        raise KeyError(f"{name!r} is not a stage; the stages are {', '.join(STAGES)} (stages/table.py).")
    return STAGES[name]


def argument(key: str) -> str:
    """The stage function's keyword argument for path `key`."""
    return {"data": "data_root", "start": "start_checkpoint"}.get(key, f"{key}_dir")


def call_paths(name: str, paths: dict[str, Path]) -> dict[str, Path]:
    """Keyword arguments of stage `name`'s function for its resolved paths."""
    return {argument(k): paths[k] / "model.pt" if k == "start" else paths[k] for k in spec(name).paths}
