"""What a stage reports for comparison: `<report_dir>/metrics.json` holds a few headline numbers (the DVC
metrics, so `dvc metrics show` prints one row per method, seed and stage in a table that fits a screen: the
file sits in the report folder itself, its path short), and DVCLive's `<report_dir>/dvclive/` the stage's
`params.yaml` (the resolved configuration) and `plots/custom/*.json` (figures that change with an
experiment, declared as DVC plots so `dvc plots diff` compares two experiments). Everything else a stage
measures goes to `summary.json` beside them (per-class IoU: per_class_iou.csv). Each is replaced atomically
(the DVCLive folder whole): a failed run keeps the previous ones.

`dvc plots show` writes plot data into a `<script>` of its page without escaping it, so a class named
`</script><script>…` would run as code there: in plot data, text values carry `<` and `>` as the look-alikes
`＜` `＞` (U+FF1C, U+FF1E), which no HTML parser reads as markup. `summary.json` keeps the names as written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_dir, write_json

_PAGE_SAFE = str.maketrans({"<": "\uff1c", ">": "\uff1e"})


def page_safe(datapoints: list[dict]) -> list[dict]:
    """Plot datapoints with `<` and `>` in text values replaced by their full-width look-alikes (see above)."""
    return [{k: v.translate(_PAGE_SAFE) if isinstance(v, str) else v for k, v in row.items()} for row in datapoints]


# The headline numbers, as `dvc metrics show` names them: short names keep its table within 160 columns (one
# column per name). summary.json keeps every number under its full name.
HEADLINE = {
    "evaluate": {"miou": "miou", "pixel_acc": "pixel_accuracy", "prototypes": "prototypes_used"},
    "interpret": {"consistency": "consistency", "stability": "stability",  # the own map's faithfulness (§13):
                  "del_auc": "faith_deletion_auc", "ins_auc": "faith_insertion_auc"},
}


def flat_params(config: dict, sep: str = ".") -> dict:
    """A nested configuration as flat `section.key` params (lists and None as text DVCLive can store)."""
    flat = pd.json_normalize(config, sep=sep).iloc[0].to_dict() if config else {}
    return {k: (v if isinstance(v, (bool, int, float, str)) else json.dumps(v)) for k, v in flat.items()}


def write_results(report_dir: Path, summary: dict, stage: str, params: dict | None = None,
                  plots: dict[str, tuple[list[dict], str, str, str]] | None = None) -> None:
    """`summary.json` (everything), the DVCLive folder (params and the custom plots, `name: (datapoints, x, y,
    template)`) and `metrics.json` (the headline metrics that exist; `{}` when none, e.g. deeplab's
    interpretability)."""
    from dvclive import Live

    report_dir = Path(report_dir)
    write_json(report_dir / "summary.json", summary)
    with atomic_dir(report_dir / "dvclive") as tmp:
        live = Live(str(tmp), save_dvc_exp=False, dvcyaml=None, report=None, resume=False)
        live.log_params(flat_params(params or {}))
        for name, (datapoints, x, y, template) in (plots or {}).items():
            live.log_plot(name, page_safe(datapoints), x=x, y=y, template=template)
        live.end()
        (tmp / "plots").mkdir(exist_ok=True)  # a declared DVC plots folder, empty when there is nothing to plot
    write_json(report_dir / "metrics.json",
               {name: float(summary[k]) for name, k in HEADLINE[stage].items() if summary.get(k) is not None})
