"""Explaining any image (`python -m scaleprotoseg.explain`), the winner per predicted pixel, Grad-CAM against a
hand-written Grad-CAM, bad inputs, and the layout of the explanation figures for 2, 21 and 150 classes.

Models are tiny and untrained; where several classes must be predicted, the class head is set (from the
image at hand) so that the logits vary over the image (`vary_head`): the explanation is then non-trivial."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scaleprotoseg.artifacts import read_patches
from scaleprotoseg.config import embedded_spec
from scaleprotoseg.data.synthetic import CLASSES as EMBEDDED_CLASSES
from scaleprotoseg.data.synthetic import generate_sample
from scaleprotoseg.data.transforms import normalise
from scaleprotoseg.explain import __main__ as cli
from scaleprotoseg.explain import figures as explain_figures
from scaleprotoseg.explain import image as explain_image
from scaleprotoseg.explain import maps as explain
from scaleprotoseg.explain.gradcam import gradcam_maps
from scaleprotoseg.interpretability import similarity_maps
from scaleprotoseg.models.checkpoint import save_checkpoint
from scaleprotoseg.models.prototypes import EPSILON, prototype_names
from scaleprotoseg.paths import repo_root

from ..figure_checks import text_problems
from .tiny import tiny_model, vary_head


def class_names(K: int) -> list[str]:
    base = list(EMBEDDED_CLASSES) if K == len(EMBEDDED_CLASSES) else ["background"] + [f"class {k}" for k in range(1, K)]
    return base if K < 100 else base[:1] + [f"a long class name number {k}" for k in range(1, K)]



def save_model(folder: Path, model, cfg, classes, patches: bool = True) -> Path:
    path = save_checkpoint(folder / "model.pt", model, cfg.to_dict(), phase="test", step=0, classes=list(classes))
    if patches and cfg.method != "deeplab":
        P = model.prototypes.num_prototypes
        rng = np.random.default_rng(0)
        np.savez_compressed(folder / "patches.npz", patches=rng.integers(0, 255, (P, 64, 64, 3), dtype=np.uint8),
                            boxes=np.tile([8, 8, 40, 40], (P, 1)), names=np.array(prototype_names(model, classes)))
    return path


def embedded_image(params, size: int = 64, index: int = 0):
    spec = dataclasses.replace(embedded_spec(params), image_size=size)
    image, label, _ = generate_sample(spec, index, "val")
    return image, label


def inputs(image, cfg):
    return normalise(image, cfg.data.mean, cfg.data.std)[None]


# ---------------------------------------------------------------------------------------------------------
# the command line


@pytest.mark.slow  # runs python -m scaleprotoseg.explain
def test_cli_explains_a_photograph_never_seen_in_training(tmp_path, params):
    """`python -m scaleprotoseg.explain` on scikit-image's astronaut with a grouped model and a DeepLab."""
    image = explain_image.sample_image(tmp_path / "in")
    K = len(EMBEDDED_CLASSES)
    model, cfg = tiny_model(params, "scaleprotoseg_groups", K)
    vary_head(model, inputs(explain_image.read_image(image, 64), cfg))
    ckpt = save_model(tmp_path / "groups", model, cfg, EMBEDDED_CLASSES)
    deeplab, dcfg = tiny_model(params, "deeplab", K)
    cam = save_model(tmp_path / "deeplab", deeplab, dcfg, EMBEDDED_CLASSES)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "scaleprotoseg.explain", "--checkpoint", str(ckpt), "--image", str(image),
                           "--out", str(out), "--gradcam", str(cam), "--size", "64", "--classes", "2", "--device", "cpu"],
                          capture_output=True, text=True, cwd=repo_root(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    png, js = out / "astronaut_explained.png", out / "astronaut_explained.json"
    assert f"wrote {png}" in proc.stdout
    assert Image.open(png).size[0] > 500
    summary = json.loads(js.read_text())
    assert summary["size"] == [64, 64] and summary["model"] == "groups" and summary["source_patches"] == "shown"
    # the explained classes: the two largest predicted classes (background last), each with the DeepLab map
    rgb = explain_image.read_image(image, 64)
    pred = explain.predict_from_sim(model, similarity_maps(model, inputs(rgb, cfg)), rgb.shape[:2])
    counts = np.bincount(pred.ravel(), minlength=K)
    ranked = sorted(np.nonzero(counts)[0], key=lambda k: (k == 0, -counts[k]))[:2]
    assert [e["class"] for e in summary["explained"]] == [EMBEDDED_CLASSES[k] for k in ranked]
    assert all(e["gradcam"] and abs(sum(e["wins_%"].values()) - 100) < 1e-6 for e in summary["explained"])
    assert all(d["group"] is not None and d["weight"] > 0 for e in summary["explained"] for d in e["deciding_prototypes"])


@pytest.mark.slow
def test_cli_explains_an_embedded_validation_image_and_says_when_patches_are_missing(tmp_path, params, capsys):
    image, _ = embedded_image(params)
    Image.fromarray(image).save(tmp_path / "val0.jpg")
    model, cfg = tiny_model(params, "scaleprotoseg", len(EMBEDDED_CLASSES))
    vary_head(model, inputs(np.asarray(Image.open(tmp_path / "val0.jpg").convert("RGB")), cfg))
    ckpt = save_model(tmp_path / "proto", model, cfg, EMBEDDED_CLASSES, patches=False)
    assert cli.main(["--checkpoint", str(ckpt), "--image", str(tmp_path / "val0.jpg"), "--out", str(tmp_path / "o"),
                         "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "val0_explained.json").read_text())
    assert summary["model"] == "prototypes" and summary["size"] == [64, 64]
    assert summary["source_patches"].startswith("No source patches: patches.npz is not next to the checkpoint")
    assert len(summary["explained"]) == min(3, len(summary["predicted_classes"])) >= 2


def test_a_large_image_is_shrunk_to_the_size_keeping_its_aspect(tmp_path):
    Image.fromarray(np.zeros((300, 1000, 3), np.uint8)).save(tmp_path / "wide.png")
    assert explain_image.read_image(tmp_path / "wide.png", 512).shape == (154, 512, 3)
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "grey.png")  # grey and small: RGB, kept as is
    assert explain_image.read_image(tmp_path / "grey.png", 512).shape == (30, 40, 3)


@pytest.fixture()
def good_inputs(tmp_path, params):
    K = len(EMBEDDED_CLASSES)
    model, cfg = tiny_model(params, "protoseg", K)
    deeplab, dcfg = tiny_model(params, "deeplab", K)
    Image.fromarray(embedded_image(params, 48)[0]).save(tmp_path / "img.png")
    return {"proto": save_model(tmp_path / "proto", model, cfg, EMBEDDED_CLASSES),
            "deeplab": save_model(tmp_path / "deeplab", deeplab, dcfg, EMBEDDED_CLASSES),
            "deeplab3": save_model(tmp_path / "deeplab3", tiny_model(params, "deeplab", 3)[0], dcfg, ["a", "b", "c"]),
            "image": tmp_path / "img.png", "out": tmp_path / "out", "root": tmp_path}


def _bad(tmp_path, case, ws):
    root = ws["root"]
    (root / "notes.png").write_text("not an image")
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(200))
    torch.save({"state_dict": {}}, root / "foreign.pt")
    args = {"checkpoint": ws["proto"], "image": ws["image"], "gradcam": None}
    args.update({
        "missing image": {"image": root / "nope.jpg"},
        "unreadable image": {"image": root / "notes.png"},
        "deeplab as checkpoint": {"checkpoint": ws["deeplab"]},
        "missing checkpoint": {"checkpoint": root / "none.pt"},
        "random bytes": {"checkpoint": root / "random.pt"},
        "foreign torch file": {"checkpoint": root / "foreign.pt"},
        "prototype model as gradcam": {"gradcam": ws["proto"]},
        "gradcam of other classes": {"gradcam": ws["deeplab3"]},
    }[case])
    argv = ["--checkpoint", str(args["checkpoint"]), "--image", str(args["image"]), "--out", str(ws["out"]), "--device", "cpu"]
    return argv + (["--gradcam", str(args["gradcam"])] if args["gradcam"] else []), args


@pytest.mark.parametrize("case,expected", [
    ("missing image", r"nope.jpg: no such image file; give --image the path of a PNG or JPEG"),
    ("unreadable image", r"notes.png is not a readable image .*give --image a PNG or JPEG"),
    ("deeplab as checkpoint", r"is a DeepLab checkpoint: it has no prototypes to explain with.*pass this file as --gradcam"),
    ("missing checkpoint", r"--checkpoint .*none.pt: no such checkpoint.*artifacts/project/<dataset>/<method>/seed-<n>"),
    ("random bytes", r"random.pt is not a model checkpoint of this project \(unreadable as a PyTorch file\)"),
    ("foreign torch file", r"foreign.pt is not a model checkpoint of this project \(another format\)"),
    ("prototype model as gradcam", r"--gradcam .* is a protoseg checkpoint; --gradcam takes a DeepLab one"),
    ("gradcam of other classes", r"--gradcam .* predicts 3 classes .*give the DeepLab of the same dataset"),
])
def test_bad_inputs_give_one_clear_message_and_write_nothing(tmp_path, good_inputs, case, expected, capsys):
    import re

    argv, _ = _bad(tmp_path, case, good_inputs)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(expected, err), err
    assert not good_inputs["out"].exists()


# ---------------------------------------------------------------------------------------------------------
# what is explained, against naive computations


def naive_similarities(model, x):
    """(P, h, w) log((d+1)/(d+ε)) with d the brute-force squared distance to the prototype's scale slice."""
    f = model.features(x, training=False)[0]  # (S·D, h, w)
    D = model.prototypes.dim
    out = []
    for p in range(model.prototypes.num_prototypes):
        s = int(model.prototypes.proto_scale[p])
        diff = f[s * D:(s + 1) * D] - model.prototypes.vectors[p][:, None, None]
        d = (diff ** 2).sum(0)
        out.append(torch.log((d + 1) / (d + EPSILON)))
    return torch.stack(out)


def naive_group_activations(gh, sim, k):
    """(G, h, w) exp(Σ_j w_kgj · sim of the class's j-th prototype), one loop per group and prototype."""
    terms = []
    for g in range(gh.groups):
        z = torch.zeros_like(sim[0])
        for j in range(gh.index.shape[1]):
            if gh.valid[k, j]:
                z = z + gh.weight[k, g, j] * sim[int(gh.index[k, j])]
        terms.append(z.exp())
    return torch.stack(terms)


def naive_contributions(model, sim, k):
    """(n, h, w): the own-class term of each of class k's groups or prototypes in class k's logit."""
    gh = model.group_head
    if gh is None:
        idx = [p for p in range(len(sim)) if int(model.prototypes.proto_class[p]) == k]
        return torch.stack([model.last_layer[k, p] * sim[p] for p in idx])
    acts = naive_group_activations(gh, sim, k)
    return torch.stack([gh.head[k, k * gh.groups + g] * acts[g] for g in range(gh.groups)])


def naive_logits(model, sim):
    gh = model.group_head
    K = model.num_classes
    if gh is None:
        return torch.stack([sum(model.last_layer[k, p] * sim[p] for p in range(len(sim))) for k in range(K)])
    acts = torch.cat([naive_group_activations(gh, sim, k) for k in range(K)])  # (K·G, h, w), class-major
    return torch.stack([sum(gh.head[k, g] * acts[g] for g in range(len(acts))) for k in range(K)])


def up(t, size):
    return F.interpolate(t[None].double(), size=size, mode="bilinear", align_corners=False)[0]


def agrees(got: np.ndarray, scores: torch.Tensor, where=None) -> bool:
    """`got` is the arg-max of `scores` (n, H, W) on at least 99 % of the pixels, and everywhere within
    float32 round-off of it (the naive sums run in another order: near-ties may fall either way)."""
    s = scores.numpy()
    where = np.ones(got.shape, bool) if where is None else where
    best = s.max(0)
    chosen = np.take_along_axis(s, got[None].clip(0), 0)[0]
    close = chosen >= best - 1e-3 * np.maximum(np.abs(best), 1)
    exact = got == s.argmax(0)
    return bool(close[where].all() and exact[where].mean() >= 0.99)


@pytest.mark.parametrize("method", ["scaleprotoseg_groups", "scaleprotoseg", "protoseg"])
@torch.no_grad()
def test_winner_is_the_arg_max_of_the_naive_contributions_over_the_predicted_mask(params, method):
    image, label = embedded_image(params, 64, index=1)
    model, cfg = tiny_model(params, method, len(EMBEDDED_CLASSES))
    x = inputs(image, cfg)
    vary_head(model, x)
    # a ground truth of background only: whatever else is predicted is absent from every label
    expl = explain.explain_input(model, image, x, EMBEDDED_CLASSES, max_classes=6, label=np.zeros_like(label))
    sim = naive_similarities(model, x)
    assert torch.allclose(sim, similarity_maps(model, x), atol=1e-4)
    size = image.shape[:2]
    logits = up(naive_logits(model, sim), size)
    assert agrees(expl.pred, logits)
    predicted = set(np.unique(expl.pred).tolist())
    assert {e.index for e in expl.classes} == predicted and len(predicted) >= 2
    assert any(e.index != 0 for e in expl.classes)  # predicted, in no label, and explained
    for e in expl.classes:
        assert np.array_equal(e.mask, expl.pred == e.index) and np.array_equal(e.winner >= 0, e.mask)
        assert agrees(e.winner, up(naive_contributions(model, sim, e.index), size), where=e.mask)
        wins = 100 * np.bincount(e.winner[e.mask], minlength=len(e.labels)) / e.mask.sum()
        assert np.allclose(e.wins, wins) and abs(e.wins.sum() - 100) < 1e-9


@torch.no_grad()
def test_labels_are_the_gallery_names_and_deciding_prototypes_come_from_the_winners(params):
    K = len(EMBEDDED_CLASSES)
    model, cfg = tiny_model(params, "scaleprotoseg", K)
    image, _ = embedded_image(params, 64, index=2)
    x = inputs(image, cfg)
    vary_head(model, x)
    names = prototype_names(model, EMBEDDED_CLASSES)
    expl = explain.explain_input(model, image, x, EMBEDDED_CLASSES)
    for e in expl.classes:
        own = [n for n in names if n.startswith(f"{e.name}/")]
        assert [f"{e.name}/{lab}" for lab in e.labels] == own  # 's<scale>/<rank within class and scale>'
        winners = [e.labels[k] for k in np.argsort(-e.wins, kind="stable") if e.wins[k] > 0]
        assert [d["label"] for d in e.deciding] == winners[: explain.MAX_DECIDING]
        assert all(names[d["prototype"]] == f"{e.name}/{d['label']}" for d in e.deciding)
    # grouped: the deciding prototypes are the winning groups' members with a non-zero weight
    gmodel, _ = tiny_model(params, "scaleprotoseg_groups", K)
    vary_head(gmodel, x)
    gh = gmodel.group_head
    for e in explain.explain_input(gmodel, image, x, EMBEDDED_CLASSES).classes:
        for d in e.deciding:
            g = int(d["group"][1:])
            j = int((gh.index[e.index] == d["prototype"]).nonzero()[0, 0])
            assert e.wins[g] > 0 and gh.valid[e.index, j] and float(gh.weight[e.index, g, j]) == pytest.approx(d["weight"], abs=1e-4)


def naive_gradcam(model, x, c, mask):
    """Grad-CAM by hand: forward hook on the last trunk stage, gradient of the class score, channel means."""
    store = {}

    def hook(_, __, out):
        out.retain_grad()
        store["a"] = out

    handle = model.backbone.layer5.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = F.interpolate(model.forward_features(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            (logits[0, c] * mask).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"][0], store["a"].grad[0]  # (C, h, w)
    cam = torch.relu((g.mean((1, 2))[:, None, None] * a).sum(0)).detach()
    cam = cam / cam.max() if cam.max() > 0 else cam
    return F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def test_gradcam_equals_a_hand_written_gradcam(params):
    model, _ = tiny_model(params, "deeplab", 4, seed=3)
    x = torch.randn(1, 3, 40, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.aspp.branches[0].bias[3] -= 1e3  # class 3 is never predicted: scored over the whole image
        pred = F.interpolate(model.forward_features(x), size=(40, 36), mode="bilinear", align_corners=False)[0].argmax(0)
    classes = [0, 1, 2, 3]
    present = set(pred.unique().tolist())
    assert len(present) >= 2 and present < set(classes), "the test needs predicted and absent classes"
    got = gradcam_maps(model, x, classes)
    assert got.shape == (4, 40, 36) and float(got.min()) >= 0 and float(got.max()) <= 1
    for c in classes:
        mask = (pred == c).float() if c in present else torch.ones(40, 36)  # absent class: the whole image
        want = naive_gradcam(model, x, c, mask)
        assert torch.allclose(got[classes.index(c)], want, atol=1e-5), c
    top = got.amax((1, 2))  # both paths are compared on a non-zero map (a random net may give all-negative ones)
    assert float(top[3]) > 0.5 and max(float(top[c]) for c in present) > 0.5


# ---------------------------------------------------------------------------------------------------------
# figure layout


class OneImageSplit:
    """A validation split of one image with K classes, as `explain_prediction` and `nearest_prototypes` read it."""

    def __init__(self, image, label, classes):
        self.image, self.lab = image, label
        self.meta = type("Meta", (), {"classes": tuple(classes)})()
        self.ids = ("val_0000",)

    def __len__(self):
        return 1

    def label(self, i):
        return self.lab

    def sample(self, i):
        return self.image, self.lab


@pytest.mark.parametrize("K", [2, 21, 150])
@pytest.mark.slow  # figures for up to 150 classes
def test_explanation_and_nearest_figures_have_no_text_problems(params, tmp_path, K):
    method = "scaleprotoseg_groups" if K == 21 else "scaleprotoseg"
    model, cfg = tiny_model(params, method, K)
    deeplab, _ = tiny_model(params, "deeplab", K)
    image, emb = embedded_image(params, 64, index=3)
    label = np.where(emb == 255, 255, (emb.astype(np.int64) * 7) % K).astype(np.uint8)
    x = inputs(image, cfg)
    vary_head(model, x)
    classes = class_names(K)
    save_model(tmp_path, model, cfg, classes)
    patches = read_patches(tmp_path)
    val = OneImageSplit(image, label, classes)
    figs = {
        "explanation": explain.explain_prediction(model, val, cfg.data, "cpu", 0, method, gradcam_model=deeplab,
                                                  patches=patches, max_classes=3),
        "nearest": explain.nearest_prototypes(model, val, cfg.data, "cpu", 0, *patches),
    }
    if K == 2:  # the other layout: no ground truth, no Grad-CAM, a note instead of the patches
        figs["explanation without patches"] = explain_figures.explanation_figure(
            explain.explain_input(model, image, x, classes, max_classes=3), None, title="any image")
    for name, fig in figs.items():
        problems = text_problems(fig)
        assert not problems, f"{name} ({K} classes):\n" + "\n".join(problems)
    texts = [t.get_text() for ax in figs["explanation"].axes for t in [ax.title]]
    assert "Grad-CAM (DeepLab)" in texts
