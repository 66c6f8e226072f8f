"""The HTML explorer: its stored data against naive references, and the page itself in headless Chromium
(a scripted click on a pixel must show the class and winner computed here by loops over the model's tensors)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from scaleprotoseg.data.prepared import PreparedDataset
from scaleprotoseg.data.transforms import eval_transform
from scaleprotoseg.explain.explorer import quantise, run_lengths, write_explorer
from scaleprotoseg.models.build import build_model
from scaleprotoseg.models.prototypes import prototype_names

from ..conftest import CLASSES

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
IMAGE = 1  # the validation image the browser test clicks on


def _model(tiny_cfg, dataset, grouped: bool, seed: int = 0):
    """A tiny ScaleProtoSeg whose maps vary over the image, like a trained one's: ASPP weights scaled up,
    each prototype set to the feature of a pixel of its class in image IMAGE (a projection), class weights
    perturbed. Grouped: three sparse groups per class, so that some prototypes are unused."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model("scaleprotoseg", tiny_cfg.model, len(CLASSES), prototypes=2, features=4).eval()
    image, label = dataset.sample(IMAGE)
    data = tiny_cfg.data
    x = eval_transform(image, data.eval_size, data.eval_short_side, data.mean, data.std)
    pl = model.prototypes
    with torch.no_grad():
        for p in model.aspp.parameters():
            p.mul_(30)
        feats = model.features(x[None], training=False)[0]  # (S·D, h, w)
        lab = torch.from_numpy(label)[None, None].float()
        small = torch.nn.functional.interpolate(lab, size=feats.shape[1:])[0, 0]  # label at feature resolution
        for p in range(pl.num_prototypes):
            s, c = int(pl.proto_scale[p]), int(pl.proto_class[p])
            cells = torch.nonzero(small == c) if (small == c).any() else torch.nonzero(small >= 0)
            i, j = cells[torch.randint(len(cells), (1,), generator=gen)[0]]
            pl.vectors[p] = feats[s * pl.dim:(s + 1) * pl.dim, i, j]
        model.last_layer.add_(0.2 * torch.randn(model.last_layer.shape, generator=gen))
        if grouped:  # each group: two of its class's prototypes, weights 0.6 and 0.4 (a sparse simplex row)
            gh = model.add_groups(3)
            weight = torch.zeros_like(gh.weight)
            for c in range(gh.num_classes):
                for g in range(gh.groups):
                    j = torch.randperm(int(gh.valid[c].sum()), generator=gen)[:2]
                    weight[c, g, j] = torch.tensor([0.6, 0.4])
            gh.weight.copy_(weight)
            gh.head.mul_(0.2 + 1.6 * torch.rand(gh.head.shape, generator=gen))
    return model


def _write(tmp_path, model, dataset, tiny_cfg, saliency=None):
    names = prototype_names(model, CLASSES)
    P = len(names)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (P, 64, 64, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[8.0, 8.0, 40.0, 48.0]], np.float32), (P, 1))
    boxes[0] = -1  # a prototype without a source box
    out = write_explorer(tmp_path / "explorer.html", model, dataset, tiny_cfg.data, "cpu", CLASSES, names,
                         patches, boxes, saliency=saliency, max_images=3, title="tiny <explorer>")
    return out, (tmp_path / "explorer.html").read_text()


def _data(text: str) -> dict:
    raw = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.DOTALL).group(1)
    return json.loads(raw)


# ---------------------------------------------------------------------------------------------------------
# naive references


def bilinear_at(m: np.ndarray, y: int, x: int, size) -> float:
    """Value at label pixel (y, x) of the (h, w) map `m` upsampled bilinearly to `size` (align_corners=False:
    pixel centres aligned, source coordinates clamped at 0)."""
    h, w = m.shape
    sy, sx = max((y + 0.5) * h / size[0] - 0.5, 0.0), max((x + 0.5) * w / size[1] - 0.5, 0.0)
    y0, x0 = int(sy), int(sx)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    ly, lx = sy - y0, sx - x0
    top = (1 - lx) * m[y0, x0] + lx * m[y0, x1]
    bottom = (1 - lx) * m[y1, x0] + lx * m[y1, x1]
    return float((1 - ly) * top + ly * bottom)


def gap(v) -> float:
    """Relative distance of the best value to the runner-up (inf for a single value)."""
    v = sorted(v)
    return (v[-1] - v[-2]) / max(1.0, abs(v[-1])) if len(v) > 1 else np.inf


@torch.no_grad()
def naive_pixels(model, x, pixels, size):
    """[(class, winner, margin, weights_matter)] at label pixels (y, x) of an image of `size`, by loops over
    the model's tensors in float64: direct-difference distances per prototype, class logits summed group by
    group (or prototype by prototype), bilinear upsampling at the pixel; winner: the arg-max of activation ×
    own-class weight (group index, or global prototype index); weights_matter: the plain arg-max differs."""
    feats = model.features(x, training=False)[0].double()  # (S·D, h, w)
    pl, gh = model.prototypes, model.group_head
    D, P, K = pl.dim, pl.num_prototypes, model.num_classes
    pc, ps = pl.proto_class.tolist(), pl.proto_scale.tolist()
    sim = []
    for p in range(P):
        s = ps[p]
        d = ((feats[s * D:(s + 1) * D] - pl.vectors[p].double()[:, None, None]) ** 2).sum(0)
        sim.append(torch.log((d + 1) / (d + 1e-4)).numpy())
    if gh is not None:
        G = gh.groups
        members = {}  # (own-class weight, activation map) per group (c, g)
        for c in range(K):
            for g in range(G):
                z = sum(float(gh.weight[c, g, j]) * sim[int(gh.index[c, j])]
                        for j in range(gh.index.shape[1]) if gh.valid[c, j])
                members[c, g] = np.exp(z)
        logits = [sum(float(gh.head[k, c * G + g]) * members[c, g] for c in range(K) for g in range(G))
                  for k in range(K)]
    else:
        logits = [sum(float(model.last_layer[k, p]) * sim[p] for p in range(P)) for k in range(K)]
    out = []
    for y, xx in pixels:
        scores = [bilinear_at(m, y, xx, size) for m in logits]
        c = int(np.argmax(scores))
        if gh is not None:
            cand = list(range(gh.groups))
            plain = [bilinear_at(members[c, g], y, xx, size) for g in cand]
            own = [float(gh.head[c, c * gh.groups + g]) for g in cand]
        else:
            cand = [p for p in range(P) if pc[p] == c]
            plain = [bilinear_at(sim[p], y, xx, size) for p in cand]
            own = [float(model.last_layer[c, p]) for p in cand]
        wins = [a * b for a, b in zip(plain, own)]
        winner, plain_winner = cand[int(np.argmax(wins))], cand[int(np.argmax(plain))]
        out.append((c, winner, float(min(gap(scores), gap(wins), gap(plain))), plain_winner != winner))
    return out


def _pick_pixels(model, dataset, data_cfg):
    """Pixels of image IMAGE with a clear decision: the most confident one, one of another class when the
    model predicts two, and one where the own-class weights change the winner, when there is one."""
    image, label = dataset.sample(IMAGE)
    x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None]
    grid = [(y, xx) for y in range(0, label.shape[0], 2) for xx in range(1, label.shape[1], 2)]
    found = [(px, *r) for px, r in zip(grid, naive_pixels(model, x, grid, label.shape)) if r[2] > 1e-4]
    picks = [max(found, key=lambda f: f[3])]
    other = [f for f in found if f[1] != picks[0][1]]
    picks.append(max(other, key=lambda f: f[3]) if other else min(found, key=lambda f: f[3]))
    flips = [f for f in found if f[4]]
    if flips and not any(f[4] for f in picks):
        picks.append(max(flips, key=lambda f: f[3]))
    return [f[:3] for f in picks]


# ---------------------------------------------------------------------------------------------------------
# the stored data


def test_run_lengths_and_quantisation_round_trip():
    rng = np.random.default_rng(0)
    a = np.repeat(rng.integers(0, 300, 40), rng.integers(1, 9, 40)).reshape(-1)[:120].reshape(8, 15)
    code = run_lengths(a)
    decoded = []
    for k in range(0, len(code), 2):
        decoded += [code[k]] * code[k + 1]
    assert decoded == a.ravel().tolist()
    assert all(code[k] != code[k + 2] for k in range(0, len(code) - 2, 2))  # maximal runs
    maps = torch.from_numpy(rng.normal(size=(3, 5, 7)))
    maps[2] = 4.0  # a constant map stays finite
    q = quantise(maps)
    raw = np.frombuffer(base64.b64decode(q["data"]), np.uint8).reshape(3, 5, 7)
    lo, hi = np.array(q["lo"]), np.array(q["hi"])
    back = lo[:, None, None] + raw / 255 * (hi - lo)[:, None, None]
    assert np.abs(back - maps.numpy()).max() <= (hi - lo).max() / 510 + 1e-9
    assert raw[:2].min() == 0 and raw[:2].max() == 255 and np.isfinite(back).all()


@pytest.mark.slow
def test_page_stores_maps_at_feature_resolution_for_predicted_classes(tmp_path, tiny_dataset, tiny_cfg):
    val = PreparedDataset(tiny_dataset, "val")
    model = _model(tiny_cfg, val, grouped=True)
    calls = []

    def saliency(x, classes):  # stands in for Grad-CAM: one map per asked class, at the input's size
        calls.append((tuple(x.shape), list(classes)))
        return torch.stack([x[0, 0] * (c + 1) for c in classes])

    out, text = _write(tmp_path, model, val, tiny_cfg, saliency)
    assert out["bytes"] == len(text.encode()) and out["images"] == 3
    assert "<title>tiny &lt;explorer&gt;</title>" in text
    data = _data(text)
    used = model.group_head.used_prototypes().numpy()
    assert [p["used"] for p in data["protos"]] == used.tolist()
    for rec in data["images"]:
        n = rec["W"] * rec["H"]
        assert sum(rec["pred"][1::2]) == n == sum(rec["truth"][1::2]) == sum(rec["win"][1::2])
        predicted = sorted(set(rec["pred"][0::2]))
        assert sorted(map(int, rec["perClass"])) == predicted
        shape, asked = calls.pop(0)
        assert shape == (1, 3, rec["H"], rec["W"]) and asked == predicted == sorted(map(int, rec["saliency"]))
        for c, e in rec["perClass"].items():
            assert e["protos"] == [p for p in range(len(used)) if used[p] and data["protos"][p]["cls"] == int(c)]
            size = rec["fh"] * rec["fw"]
            assert len(base64.b64decode(e["groupMaps"]["data"])) == 3 * size
            if e["protos"]:
                assert len(base64.b64decode(e["data"])) == len(e["protos"]) * size


def test_bad_inputs_name_the_fix(tmp_path, tiny_dataset, tiny_cfg):
    val = PreparedDataset(tiny_dataset, "val")
    deeplab = build_model("deeplab", tiny_cfg.model, 3)
    with pytest.raises(ValueError, match="needs a prototype model"):
        write_explorer(tmp_path / "x.html", deeplab, val, tiny_cfg.data, "cpu", CLASSES, [])
    model = _model(tiny_cfg, val, grouped=False)
    names = prototype_names(model, CLASSES)
    with pytest.raises(ValueError, match="prototype_names"):
        write_explorer(tmp_path / "x.html", model, val, tiny_cfg.data, "cpu", CLASSES, names[:-1])
    args = (tmp_path / "x.html", model, val, tiny_cfg.data, "cpu", CLASSES, names)
    with pytest.raises(ValueError, match=r"saliency\[0\].*\(K=3, H, W\)"):
        write_explorer(*args, saliency={0: np.zeros((2, 4, 4))})
    with pytest.raises(ValueError, match="patches and boxes go together"):
        write_explorer(*args, patches=np.zeros((1, 2, 2, 3)))
    assert not (tmp_path / "x.html").exists()


# ---------------------------------------------------------------------------------------------------------
# the page in a real browser


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


def _outside_sources(html: str) -> list:
    """Every script, stylesheet, image or link of the page that is not inline (a data: URL or script text)."""
    return [(t, a) for t, a in _tags(html) if t == "link" or any(k in a and not str(a[k]).startswith("data:")
                                                                 for k in ("src", "href", "srcset", "data"))]


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (chromium, chromium-browser or google-chrome): the explorer's browser test "
                "needs one; install it with `apt-get install -y chromium`")


def _chromium(browser, tmp_path, url, *extra) -> str:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize("grouped", [False, True], ids=["prototypes", "groups"])
@pytest.mark.slow  # headless Chromium
def test_a_click_in_headless_chromium_shows_the_pixels_class_and_winner(tmp_path, tiny_dataset, tiny_cfg, grouped):
    browser = _browser()
    val = PreparedDataset(tiny_dataset, "val")
    model = _model(tiny_cfg, val, grouped)
    H, W = val.label(IMAGE).shape
    saliency = {IMAGE: np.random.default_rng(1).random((3, H, W))} if grouped else {0: np.zeros((3, H, W))}
    _, text = _write(tmp_path, model, val, tiny_cfg, saliency)
    assert "http://" not in text and "https://" not in text
    assert not _outside_sources(text)
    pixels = _pick_pixels(model, val, tiny_cfg.data)
    gh = model.group_head
    shot = tmp_path / "explorer.png"
    for k, ((y, x), c, winner) in enumerate(pixels):
        extra = [f"--screenshot={shot}", "--window-size=1280,900"] if grouped and k == 0 else []
        url = (tmp_path / "explorer.html").as_uri() + f"#image={IMAGE}&x={x}&y={y}"
        dom = _chromium(browser, tmp_path, url, "--dump-dom", *extra)
        tags = _tags(dom)
        assert ("body", {"data-ready": "1"}) in tags, dom[-3000:]
        assert not _outside_sources(dom) and sum(t == "img" for t, _ in tags) > 10  # images all inline
        panel = next(a for t, a in tags if a.get("id") == "panel")
        where = (panel["data-state"], panel["data-image"], panel["data-x"], panel["data-y"])
        assert where == ("pixel", str(IMAGE), str(x), str(y))
        assert panel["data-class"] == str(c) and panel["data-class-name"] == CLASSES[c]
        shown = [int(p) for p in panel["data-prototypes"].split(",") if p]
        if grouped:
            assert panel["data-group"] == str(winner) and panel["data-prototype"] == ""
            members = {int(gh.index[c, j]): float(gh.weight.detach()[c, winner, j]) for j in range(gh.index.shape[1])
                       if gh.valid[c, j] and gh.weight[c, winner, j] > 0}
            assert set(shown) == set(members) and [members[p] for p in shown] == sorted(members.values(), reverse=True)
            assert panel["data-gradcam"] == "1"
        else:
            assert panel["data-prototype"] == str(winner) and panel["data-group"] == ""
            own = [p for p, k in enumerate(model.prototypes.proto_class.tolist()) if k == c]
            assert shown[0] == winner and sorted(shown) == own
            assert panel["data-gradcam"] == "0"  # a map was given for another image only
    gallery = _tags(dom.split('<section id="gallery"', 1)[1])
    cards = {int(a["data-prototype"]): "unused" in a["class"] for t, a in gallery if "data-prototype" in a}
    expect_unused = ~gh.used_prototypes().numpy() if grouped else np.zeros(model.prototypes.num_prototypes, bool)
    assert cards == {p: bool(u) for p, u in enumerate(expect_unused)}
    if grouped:  # the page as a person sees it after the first click, kept as the test's artefact
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"explorer screenshot: {shot}")


def _unrle(runs) -> np.ndarray:
    return np.repeat(np.asarray(runs[0::2]), np.asarray(runs[1::2]))


def test_maps_are_stored_for_the_classes_with_most_pixels_only(tmp_path, tiny_dataset, tiny_cfg, monkeypatch):
    """Past MAP_CLASSES predicted classes in an image (an untrained model predicts a hundred of ADE20K's 150) only
    the classes with the most pixels keep activation and saliency maps; the others keep their prototype list."""
    from scaleprotoseg.explain import explorer

    val = PreparedDataset(tiny_dataset, "val")
    model = _model(tiny_cfg, val, grouped=True)
    monkeypatch.setattr(explorer, "MAP_CLASSES", 1)
    asked = []

    def saliency(x, classes):
        asked.append(list(classes))
        return torch.stack([x[0, 0] * (c + 1) for c in classes])

    _, text = _write(tmp_path, model, val, tiny_cfg, saliency)
    data = _data(text)
    assert data["mapClasses"] == 1
    several = 0
    for rec, wanted in zip(data["images"], asked):
        pred = _unrle(rec["pred"])
        counts = np.bincount(pred, minlength=len(CLASSES))
        top = min(np.flatnonzero(counts == counts.max()))  # most pixels, the lower id on a tie
        assert wanted == [top] and list(rec["saliency"]) == [str(top)]
        for c, e in rec["perClass"].items():
            assert e["maps"] == (int(c) == top)
            assert ("groupMaps" in e) == ("data" in e) == (int(c) == top)
            assert e["protos"]  # the list, which the panel's cards need, is kept
        several += len(rec["perClass"]) > 1
    assert several  # some image predicts more than one class, so the cap was exercised


@pytest.mark.slow  # headless Chromium
def test_a_click_on_a_class_without_stored_maps_says_so(tmp_path, tiny_dataset, tiny_cfg, monkeypatch):
    from scaleprotoseg.explain import explorer

    browser = _browser()
    val = PreparedDataset(tiny_dataset, "val")
    model = _model(tiny_cfg, val, grouped=True)
    monkeypatch.setattr(explorer, "MAP_CLASSES", 1)
    _, text = _write(tmp_path, model, val, tiny_cfg)
    rec = _data(text)["images"][IMAGE]
    pred = _unrle(rec["pred"]).reshape(rec["H"], rec["W"])
    bare = [int(c) for c, e in rec["perClass"].items() if not e["maps"]]
    assert bare, "the model predicts one class only in this image"
    for c, stored in ((bare[0], "0"), (next(int(c) for c, e in rec["perClass"].items() if e["maps"]), "1")):
        y, x = map(int, np.argwhere(pred == c)[0])
        dom = _chromium(browser, tmp_path, (tmp_path / "explorer.html").as_uri() + f"#image={IMAGE}&x={x}&y={y}", "--dump-dom")
        tags = _tags(dom)
        assert ("body", {"data-ready": "1"}) in tags, dom[-3000:]
        panel = next(a for t, a in tags if a.get("id") == "panel")
        assert (panel["data-state"], panel["data-class"], panel["data-maps"]) == ("pixel", str(c), stored)
        assert any("data-maps-note" in a for t, a in tags) == (stored == "0")
        assert panel["data-prototypes"]  # the winning group's prototypes are listed either way


def test_large_feature_grids_are_stored_as_block_means(tmp_path, tiny_dataset, tiny_cfg, monkeypatch):
    """A grid above MAP_SIDE (Cityscapes' 128 × 256) is stored averaged over blocks of cells: here the tiny
    grid with MAP_SIDE = half its side, against a naive mean of each 2 × 2 block of the model's own maps."""
    from scaleprotoseg.explain import explorer
    from scaleprotoseg.interpretability import similarity_maps

    val = PreparedDataset(tiny_dataset, "val")
    model = _model(tiny_cfg, val, grouped=False)
    image, _ = val.sample(0)
    data_cfg = tiny_cfg.data
    x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None]
    with torch.no_grad():
        full = similarity_maps(model, x).numpy()  # (P, h, w)
    P, h, w = full.shape
    assert h % 2 == 0 and w % 2 == 0 and h > 1
    monkeypatch.setattr(explorer, "MAP_SIDE", max(h, w) // 2)
    _, text = _write(tmp_path, model, val, tiny_cfg)
    rec = _data(text)["images"][0]
    assert (rec["fh"], rec["fw"]) == (h // 2, w // 2)
    blocks = full.reshape(P, h // 2, 2, w // 2, 2).mean((2, 4))  # the naive block means
    for e in rec["perClass"].values():
        if not e["protos"]:
            continue
        q = np.frombuffer(base64.b64decode(e["data"]), np.uint8).reshape(len(e["protos"]), h // 2, w // 2)
        lo, hi = np.array(e["lo"]), np.array(e["hi"])
        back = lo[:, None, None] + q / 255 * (hi - lo)[:, None, None]
        want = blocks[e["protos"]]
        np.testing.assert_allclose(lo, want.min((1, 2)), rtol=1e-5, atol=1e-6)
        assert np.abs(back - want).max() <= (hi - lo).max() / 255 + 1e-6
