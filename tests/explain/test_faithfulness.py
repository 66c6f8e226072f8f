"""Faithfulness of explanations (docs/method.md §13): the vectorised curves against a naive loop, a model whose
decision depends on a known region, the random ranking's expected AUC, and the whole loop on real models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaleprotoseg.explain import faithfulness as fa

from .tiny import tiny_model, vary_head



class KeyRegion(nn.Module):
    """Two classes; at every pixel P(class 1) = q = the share of the key pixels whose channel 0 is still 1
    (q clamped to [1e-6, 1 − 1e-6]), on a `grid` of output cells: its decision depends on the key region only."""

    num_classes = 2

    def __init__(self, key: torch.Tensor, grid):
        super().__init__()
        self.key, self.grid = key.float(), grid

    def predict_logits(self, x):
        q = ((x[:, 0] * self.key).sum((1, 2)) / self.key.sum()).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-q), torch.log(q)], 1)[:, :, None, None].expand(-1, -1, *self.grid)


def key_model(H=32, W=32, grid=(8, 8), key_cells=((1, 1), (1, 2), (2, 1), (2, 2), (5, 6), (6, 6), (6, 5), (5, 5))):
    cells = fa.cell_index((H, W), grid)
    key = torch.zeros(H, W, dtype=torch.bool)
    for r, c in key_cells:
        key |= cells == r * grid[1] + c
    return KeyRegion(key, grid), key, cells


@torch.no_grad()
def naive_curves(model, x, c, mask, cells, order, counts, mode):
    """The curve by hand: per step, per cell in the order, per pixel."""
    H, W = x.shape[-2:]
    out = []
    for n in counts:
        chosen = set(int(k) for k in order[:n])
        xt = x.clone() if mode == "deletion" else torch.zeros_like(x)
        for y in range(H):
            for xx in range(W):
                if int(cells[y, xx]) in chosen:
                    xt[0, :, y, xx] = 0.0 if mode == "deletion" else x[0, :, y, xx]
        p = F.interpolate(model.predict_logits(xt), size=(H, W), mode="bilinear", align_corners=False).softmax(1)[0, c]
        out.append(float(p[mask].mean()))
    return np.array(out)


def naive_auc(curve, counts, n_cells):
    """Trapezoids of curve / curve[0] (the unperturbed score) over the fraction of cells, one by one."""
    total = 0.0
    for t in range(1, len(curve)):
        total += (curve[t] + curve[t - 1]) / 2 / curve[0] * (counts[t] - counts[t - 1]) / n_cells
    return total


def test_vectorised_curves_and_auc_equal_a_naive_loop(params):
    model, _ = tiny_model(params, "protoseg", 3, seed=2)
    x = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    grid = tuple(model.predict_logits(x).shape[-2:])
    assert grid == (3, 4)  # output stride 8: 8 × 8-pixel cells, the last row clipped, the last column padding only
    cells = fa.cell_index((20, 24), grid)
    assert cells[:8, :8].unique().tolist() == [0] and cells[16:, 16:].unique().tolist() == [8] and int(cells.max()) == 8
    pred = fa.predicted(model, x)
    c = int(np.bincount(pred.ravel()).argmax())
    mask = torch.as_tensor(pred == c)
    order = fa.ranking(torch.randn(9, generator=torch.Generator().manual_seed(5)), np.random.default_rng(0))
    counts = fa.step_counts(9, steps=4)
    assert counts.tolist() == [0, 2, 4, 7, 9]
    got = fa.curves(model, x, c, mask, cells, order, counts, torch.zeros_like(x))
    for mode in ("deletion", "insertion"):
        want = naive_curves(model, x, c, mask, cells, order, counts, mode)
        np.testing.assert_allclose(got[mode], want, rtol=1e-4, atol=1e-6)
    s0 = got["deletion"][0]
    assert got["insertion"][-1] == s0
    want_del = naive_curves(model, x, c, mask, cells, order, counts, "deletion")
    assert fa.auc(got["deletion"], counts / 9, s0) == pytest.approx(naive_auc(want_del, counts, 9), rel=1e-4)


def test_the_inverse_shortcut_equals_computing_its_curves(params):
    """The inverse ranking's curves, taken from the map's curves read backwards, equal computing them."""
    model, _ = tiny_model(params, "scaleprotoseg", 3, seed=6)
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    cells = fa.cell_index((40, 40), tuple(model.predict_logits(x).shape[-2:]))
    n = int(cells.max()) + 1
    pred = fa.predicted(model, x)
    c = int(np.bincount(pred.ravel()).argmax())
    mask = torch.as_tensor(pred == c)
    order = fa.ranking(torch.randn(n, generator=torch.Generator().manual_seed(3)), np.random.default_rng(1))
    counts = fa.step_counts(n, steps=5)
    assert np.array_equal(counts, n - counts[::-1])
    fwd = fa.curves(model, x, c, mask, cells, order, counts, torch.zeros_like(x))
    inv = fa.curves(model, x, c, mask, cells, order.flip(0), counts, torch.zeros_like(x))
    np.testing.assert_allclose(inv["deletion"], fwd["insertion"][::-1], rtol=1e-5)
    np.testing.assert_allclose(inv["insertion"], fwd["deletion"][::-1], rtol=1e-5)


def test_cells_follow_the_output_grid():
    cells = fa.cell_index((16, 16), (2, 2))
    assert cells[:8, :8].unique().tolist() == [0] and cells[8:, 8:].unique().tolist() == [3]
    scores = fa.cell_scores(torch.arange(256.0).reshape(16, 16), cells, 4)
    assert scores.argmax() == 3 and scores.argmin() == 0


def test_the_true_explanation_beats_random_and_its_inverse_is_worse():
    model, key, cells = key_model()
    x = torch.ones(1, 3, 32, 32)
    mask = torch.ones(32, 32, dtype=torch.bool)
    counts = fa.step_counts(64, steps=16)
    res = {}
    maps = {"true": key.float(), "inverse": -key.float()}
    for name, emap in maps.items():
        order = fa.ranking(fa.cell_scores(emap, cells, 64), np.random.default_rng(0))
        cur = fa.curves(model, x, 1, mask, cells, order, counts, torch.zeros_like(x))
        res[name] = (fa.auc(cur["deletion"], counts / 64, cur["s0"]), fa.auc(cur["insertion"], counts / 64, cur["s0"]))
    rand = []
    for s in range(20):
        order = fa.ranking(torch.as_tensor(np.random.default_rng(s).random(64)), np.random.default_rng(s))
        cur = fa.curves(model, x, 1, mask, cells, order, counts, torch.zeros_like(x))
        rand.append((fa.auc(cur["deletion"], counts / 64, cur["s0"]), fa.auc(cur["insertion"], counts / 64, cur["s0"])))
    rd, ri = np.mean(rand, 0)
    assert res["true"][0] < rd - 0.3 < res["inverse"][0] - 0.6  # deletion: low for the true map, high for its inverse
    assert res["true"][1] > ri + 0.3 > res["inverse"][1] + 0.6


def test_random_ranking_auc_matches_its_expectation():
    """With one step per cell and a score linear in the k intact key cells of N, the deletion AUC is
    (mean 1-based rank of the key cells − 1/2) / N: under a random ranking its mean is 1/2 and its variance
    (N + 1)(N − k) / (12 k N²) (sampling k ranks without replacement); the mean of R rankings lies within
    4 standard errors of 1/2 (and insertion is 1 − deletion)."""
    model, key, cells = key_model()
    N, k, R = 64, 8, 60
    x = torch.ones(1, 3, 32, 32)
    mask = torch.ones(32, 32, dtype=torch.bool)
    counts = fa.step_counts(N, steps=N)
    dels, inss = [], []
    for s in range(R):
        order = fa.ranking(torch.as_tensor(np.random.default_rng([7, s]).random(N)), np.random.default_rng(s))
        cur = fa.curves(model, x, 1, mask, cells, order, counts, torch.zeros_like(x))
        dels.append(fa.auc(cur["deletion"], counts / N, cur["s0"]))
        inss.append(fa.auc(cur["insertion"], counts / N, cur["s0"]))
        rank = {int(c): j + 1 for j, c in enumerate(order)}
        key_cells = cells[key].unique().tolist()
        assert dels[-1] == pytest.approx((np.mean([rank[c] for c in key_cells]) - 0.5) / N, abs=1e-5)
    se = np.sqrt((N + 1) * (N - k) / (12 * k * N**2) / R)
    assert abs(np.mean(dels) - 0.5) < 4 * se
    np.testing.assert_allclose(np.array(dels) + np.array(inss), 1.0, atol=1e-5)


def test_relevance_mass_and_pointing_game():
    gt = torch.zeros(4, 4, dtype=torch.bool)
    gt[:2] = True
    valid = torch.ones(4, 4, dtype=torch.bool)
    emap = torch.zeros(4, 4)
    emap[0, 0], emap[3, 3] = 3.0, 1.0
    assert fa.relevance_mass(emap, gt, valid) == pytest.approx(3 / 4)  # min-max: (1 + 0) inside of (1 + 1/3) total
    assert fa.pointing_game(emap, gt, valid) == 1.0
    valid[0, 0] = False  # void pixels count for neither
    assert fa.pointing_game(emap, gt, valid) == 0.0 and fa.relevance_mass(emap, gt, valid) == 0.0


class Images:
    """A dataset of a few random images and labels with the PreparedDataset interface the loop reads."""

    def __init__(self, n=3, size=(24, 24), K=3):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
        self.labels = [rng.integers(0, K, size).astype(np.uint8) for _ in range(n)]
        self.ids = [f"im{i}" for i in range(n)]
        self.meta = SimpleNamespace(classes=["background"] + [f"c{k}" for k in range(1, K)])

    def __len__(self):
        return len(self.images)

    def sample(self, i):
        return self.images[i], self.labels[i]


def test_the_loop_runs_on_prototype_models_and_deeplab(params):
    data = Images()
    data_cfg = SimpleNamespace(eval_size=None, eval_short_side=None, mean=[0.5] * 3, std=[0.25] * 3)
    deeplab, _ = tiny_model(params, "deeplab", 3, seed=1)
    for method in ("protoseg", "scaleprotoseg_groups"):
        model, _ = tiny_model(params, method, 3, seed=4)
        x = (torch.as_tensor(data.images[0]).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
        vary_head(model, x)
        # 24 × 24 images: 9 cells, and 3 steps count them symmetrically (the inverse's curves are the map's reversed)
        res = fa.evaluate_faithfulness(fa.explainers(model, deeplab), data, data_cfg, "cpu", seed=0, n_images=2, steps=3)
        assert set(res.metrics) == {"own", "gradcam", "inverse", "random", "deeplab_gradcam", "deeplab_inverse", "deeplab_random"}
        assert res.metrics["own"]["n"] > 0 and res.metrics["deeplab_gradcam"]["model"] == "deeplab"
        assert res.rows["image"].nunique() == 2
        for name, (frac, d, i) in res.curves.items():
            assert frac[0] == 0 and frac[-1] == 1 and d[0] == pytest.approx(1) and i[-1] == pytest.approx(1), name
        for (d, i), (di, ii) in [((res.metrics[a]["deletion_auc"], res.metrics[a]["insertion_auc"]),
                                   (res.metrics[b]["deletion_auc"], res.metrics[b]["insertion_auc"]))
                                  for a, b in (("own", "inverse"), ("deeplab_gradcam", "deeplab_inverse"))]:
            assert di == pytest.approx(i, abs=2e-4) and ii == pytest.approx(d, abs=2e-4)  # the order reversed
        head = fa.headline(res.metrics)
        assert head["faith_deletion_auc"] == res.metrics["own"]["deletion_auc"]
        assert head["faith_gradcam_insertion_auc"] == res.metrics["gradcam"]["insertion_auc"]
        assert head["faith_random_deletion_auc"] == res.metrics["random"]["deletion_auc"]
    only = fa.evaluate_faithfulness(fa.explainers(None, deeplab), data, data_cfg, "cpu", seed=0, n_images=1, steps=4)
    assert set(only.metrics) == {"deeplab_gradcam", "deeplab_inverse", "deeplab_random"}
    assert set(fa.headline(only.metrics)) >= {"faith_gradcam_deletion_auc", "faith_gradcam_insertion_auc",
                                              "faith_random_deletion_auc"}
    assert fa.headline(only.metrics)["faith_random_insertion_auc"] == only.metrics["deeplab_random"]["insertion_auc"]


def test_report_gives_faithfulness_mean_std_over_seeds(tmp_path):
    from scaleprotoseg.atomic import write_json
    from scaleprotoseg.stages.layout import layout
    from scaleprotoseg.stages.report import collect_results, display_table

    seeds, own, cam = [1, 2], {1: 0.2, 2: 0.3}, {1: 0.5, 2: 0.25}
    for m in ("deeplab", "protoseg"):
        for s in seeds:
            write_json(tmp_path / layout("evaluate_reports", "embedded", m, s) / "summary.json",
                       {"miou": 50.0, "pixel_accuracy": 90.0, "iou": {"background": 50.0}})
            summary = {"faith_gradcam_deletion_auc": cam[s] + (m == "deeplab")}
            if m == "protoseg":
                summary.update(faith_deletion_auc=own[s], faith_insertion_auc=1 - own[s], faith_relevance_mass=0.4)
            write_json(tmp_path / layout("interpret_reports", "embedded", m, s) / "summary.json", summary)
    table = collect_results(["deeplab", "protoseg"], seeds, tmp_path)["table"]
    assert table.loc["protoseg", "deletion AUC own mean"] == pytest.approx(0.25)
    assert table.loc["protoseg", "deletion AUC own std"] == pytest.approx(np.std([0.2, 0.3], ddof=1))
    assert table.loc["deeplab", "deletion AUC Grad-CAM mean"] == pytest.approx(1.375)
    shown = display_table(table)
    assert shown.loc["deeplab", "deletion AUC own"] == "—" and shown.loc["protoseg", "insertion AUC own"] == "0.750 ± 0.071"


def test_faithfulness_figure_text_fits():
    from scaleprotoseg.explain.figures import faithfulness_figure

    from ..figure_checks import text_problems

    f = np.linspace(0, 1, 11)
    curves = {n: (f, 1 - f**p, f**p) for n, p in (("own", 0.5), ("gradcam", 0.7), ("inverse", 2.0), ("random", 1.0))}
    fig = faithfulness_figure(curves, title="scaleprotoseg (seed 1): deletion and insertion curves, mean over the "
                                            "classes predicted on 4 seeded validation images")
    assert text_problems(fig) == []
    assert [t.get_text().split(" (")[0] for t in fig.axes[0].get_legend().get_texts()] == [
        "own map", "Grad-CAM", "own map, inverted", "random"]
    assert text_problems(faithfulness_figure({})) == []


def test_gradcam_explains_a_prototype_model_as_a_hand_written_gradcam(params):
    """Grad-CAM on a prototype model: the trunk's last stage, the class's logits through the prototype head."""
    from scaleprotoseg.explain.gradcam import gradcam_maps

    model, _ = tiny_model(params, "scaleprotoseg_groups", 3, seed=8)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    vary_head(model, x)
    pred = fa.predicted(model, x)
    got = gradcam_maps(model, x, [0, 1, 2])
    store = {}
    handle = model.backbone.layer5.register_forward_hook(lambda _, __, out: store.update(a=out) or out.retain_grad())
    for c in range(3):
        mask = torch.as_tensor(pred == c) if (pred == c).any() else torch.ones(32, 32, dtype=torch.bool)
        with torch.enable_grad():
            logits = F.interpolate(model.predict_logits(x), size=(32, 32), mode="bilinear", align_corners=False)
            (logits[0, c] * mask).sum().backward()
        a, g = store["a"][0], store["a"].grad[0]
        cam = torch.relu((g.mean((1, 2))[:, None, None] * a).sum(0)).detach()
        cam = cam / cam.max() if cam.max() > 0 else cam
        want = F.interpolate(cam[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        assert torch.allclose(got[c], want, atol=1e-5), c
    handle.remove()
    assert float(got.amax()) > 0.5  # compared on a non-zero map (upsampling keeps its maximum below 1)


def test_large_images_go_through_in_batches_bounded_by_the_logit_budget(monkeypatch):
    """Many classes or large inputs: fewer images per forward pass, the same scores as one pass each."""

    class Logits(nn.Module):
        num_classes = 5

        def __init__(self):
            super().__init__()
            self.seen = []

        def predict_logits(self, x):
            self.seen.append(len(x))
            return F.avg_pool2d(x.mean(1, keepdim=True), 4).repeat(1, 5, 1, 1) * torch.arange(5.0)[None, :, None, None]

    torch.manual_seed(0)
    xs, mask = torch.randn(7, 3, 16, 16), torch.rand(16, 16) > 0.5
    model = Logits()
    one_each = torch.cat([fa.class_score(model, x[None], 3, mask) for x in xs])
    monkeypatch.setattr(fa, "LOGIT_BUDGET", 2 * 5 * 16 * 16)  # two images' logits
    model.seen.clear()
    torch.testing.assert_close(fa.class_score(model, xs, 3, mask), one_each)
    assert model.seen == [2, 2, 2, 1]
    monkeypatch.setattr(fa, "LOGIT_BUDGET", 1)  # never below one image
    model.seen.clear()
    fa.class_score(model, xs, 3, mask)
    assert model.seen == [1] * 7
    monkeypatch.setattr(fa, "LOGIT_BUDGET", 2**27)  # the pixels bound it too (the trunk's activations)
    monkeypatch.setattr(fa, "PIXEL_BUDGET", 3 * 16 * 16)
    model.seen.clear()
    torch.testing.assert_close(fa.class_score(model, xs, 3, mask), one_each)
    assert model.seen == [3, 3, 1]
