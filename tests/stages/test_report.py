"""The report over seeds: mean ± sample std per method and metric against a naive computation, the per-seed
table, `—` where a method has no such quantity, and the paper's mean ± std beside ours."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from scaleprotoseg.atomic import write_json
from scaleprotoseg.stages.layout import layout
from scaleprotoseg.stages.report import collect_results, display_table, write_report

SEEDS = [5, 3, 11]
MIOU = {"deeplab": [70.0, 72.5, 68.0], "protoseg": [50.0, 51.0, 47.5]}
CONSISTENCY = [10.0, 20.0, 15.0]


def naive_mean_std(values):
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@pytest.fixture()
def results(tmp_path):
    for m, values in MIOU.items():
        for seed, v in zip(SEEDS, values):
            summary = {"miou": v, "pixel_accuracy": 90.0 + v / 100, "iou": {"background": v + 1, "thing": v - 1}}
            if m == "protoseg":
                summary.update(prototypes=20, prototypes_used=18)
            write_json(tmp_path / layout("evaluate_reports", "pascal", m, seed) / "summary.json", summary)
            write_json(tmp_path / layout("train", "pascal", m, seed) / "train_summary.json", {"seconds": 100.0 + seed})
    for seed, c in zip(SEEDS, CONSISTENCY):
        write_json(tmp_path / layout("interpret_reports", "pascal", "protoseg", seed) / "summary.json",
                   {"consistency": c, "consistency_evaluated": 20, "stability": 90.0})
    return collect_results(list(MIOU), SEEDS, tmp_path, dataset="pascal"), tmp_path


def test_mean_and_sample_std_over_seeds_match_a_naive_computation(results):
    res, _ = results
    table = res["table"]
    for m, values in MIOU.items():
        mean, std = naive_mean_std(values)
        assert table.loc[m, "mIoU % mean"] == pytest.approx(mean) and table.loc[m, "mIoU % std"] == pytest.approx(std)
        assert table.loc[m, "seeds"] == 3
    mean, std = naive_mean_std(CONSISTENCY)
    assert table.loc["protoseg", "consistency % mean"] == pytest.approx(mean)
    assert table.loc["protoseg", "consistency % std"] == pytest.approx(std)
    assert pd.isna(table.loc["deeplab", "consistency % mean"])  # a black box has none (shown as `—`), not 0
    assert res["iou"].loc["thing", "protoseg"] == pytest.approx(sum(MIOU["protoseg"]) / 3 - 1)


def test_report_shows_mean_std_the_paper_and_every_seed_in_order(results, tmp_path):
    res, _ = results
    shown = display_table(res["table"])
    mean, std = naive_mean_std(MIOU["protoseg"])
    assert shown.loc["protoseg", "mIoU %"] == f"{mean:.2f} ± {std:.2f}"
    assert shown.loc["deeplab", "prototypes used"] == "—" and shown.loc["deeplab", "consistency %"] == "—"
    summary = write_report(res, "pascal", tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert f"{mean:.2f} ± {std:.2f}" in text and "71.98 ± 0.11" in text  # ours beside the paper's
    assert "over 3 seeds (5, 3, 11)" in text and "nan" not in text.lower()
    assert text.index("seed 5") < text.index("seed 3") < text.index("seed 11")  # as experiment.seeds lists them
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["deeplab"]["miou_mean"] == pytest.approx(sum(MIOU["deeplab"]) / 3, abs=1e-4)
    assert summary["seeds"] == 3 and summary["best"] == "deeplab"
    # the consistency's denominator beside it, and why it moves in steps of 100 / N
    assert shown.loc["protoseg", "prototypes in consistency"] == "20 ± 0" and shown.loc["deeplab", "prototypes in consistency"] == "—"
    assert "steps of 100 / N: 5.00 is one prototype of 20" in text


def test_one_seed_reports_no_std_and_says_so(tmp_path):
    write_json(tmp_path / layout("evaluate_reports", "embedded", "deeplab", 7) / "summary.json",
               {"miou": 60.0, "pixel_accuracy": 90.0, "iou": {"a": 60.0}})
    res = collect_results(["deeplab"], [7], tmp_path)
    assert pd.isna(res["table"].loc["deeplab", "mIoU % std"])
    write_report(res, "embedded", tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    assert "one seed (7): no standard deviation" in text and "| 60.00 " in text


def test_a_missing_seed_names_the_stage_to_run(tmp_path):
    from scaleprotoseg.errors import ArtifactError

    with pytest.raises(ArtifactError, match=r"dvc repro evaluate@deeplab-4"):
        collect_results(["deeplab"], [4], tmp_path)
