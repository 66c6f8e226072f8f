"""`dvc plots show` / `dvc plots diff` write a page that renders with no network.

`.dvc/config` points DVC at tools/plots/template.html, which carries vega, vega-lite and vega-embed inline
(built by tools/plots/build_template.py from tools/plots/vendor/). A tiny git+DVC repository with a DVCLive
curve, a confusion matrix, a bar plot and an image is plotted, and the pages are opened in headless Chromium
with every host name unresolvable: each chart must be drawn as SVG marks that carry the plotted data, and the
same check on DVC's default (CDN) page must find nothing drawn.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from configobj import ConfigObj
from dvc_render.html import PAGE_HTML
from PIL import Image

from scaleprotoseg.paths import repo_root

ROOT = repo_root(Path(__file__).parent)
PLOTS_TOOL = ROOT / "tools" / "plots"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not on PATH (Debian: `apt-get install chromium`); the offline plots page is not rendered",
)

# Two revisions of the plotted files. The confusion pairs use DVCLive's field names (actual, predicted).
REV1 = {
    "loss": [1.0, 0.7, 0.5],
    "confusion": [("sky", "sky"), ("road", "sky"), ("road", "road")],
    "iou": {"sky": 0.8, "road": 0.6},
    "colour": (200, 30, 30),
}
REV2 = {
    "loss": [1.0, 0.6, 0.4, 0.3],
    "confusion": [("sky", "sky"), ("sky", "sky"), ("road", "road"), ("road", "road"), ("sky", "road")],
    "iou": {"sky": 0.9, "road": 0.7, "car": 0.5},
    "colour": (30, 30, 200),
}
REV_COLOURS = [(0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)]  # dvc-render's first two revision colours
IMAGE_SIZE = (64, 32)
DVC_YAML = """\
plots:
  - dvclive/plots/metrics/train/loss.tsv:
      x: step
  - dvclive/plots/sklearn/confusion_matrix.json:
      template: confusion
      x: actual
      y: predicted
  - dvclive/plots/custom/iou.json:
      template: bar_horizontal
      x: iou
      y: class
  - dvclive/plots/images/prototype.png
"""


# ---------------------------------------------------------------------------------------------------------
# a small DOM built from the HTML Chromium dumps


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], ""

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()


VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if any(n.tag == tag for n in self.stack[1:]):
            while self.stack.pop().tag != tag:
                pass

    def handle_data(self, data):
        self.stack[-1].text += data


def parse(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    return builder.root


def vega_div_ids(page: Node) -> list[str]:
    """Ids of the divs DVC fills with `vegaEmbed('#id', spec)`, read from the page as written."""
    return [
        n.attrs["id"] for n in page.iter()
        if n.tag == "div" and any(c.tag == "script" and "vegaEmbed(" in c.text for c in n.children)
    ]


def by_id(dom: Node, div_id: str) -> Node:
    found = [n for n in dom.iter() if n.attrs.get("id") == div_id]
    assert len(found) == 1, f"{len(found)} elements with id {div_id!r} in the rendered page"
    return found[0]


def drawn_charts(div: Node) -> list[Node]:
    return [n for n in div.iter() if n.tag == "svg" and "marks" in n.attrs.get("class", "").split()]


def mark_data(div: Node, role: str) -> list[dict[str, str]]:
    """The data vega writes into the aria-label of every mark item of one kind ('rule mark', 'bar', ...)."""
    items = [n for n in div.iter() if n.attrs.get("aria-roledescription") == role]
    return [dict(part.split(": ", 1) for part in n.attrs["aria-label"].split("; ")) for n in items]


# ---------------------------------------------------------------------------------------------------------
# the repository, the pages and Chromium


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo)


def git(repo: Path, *args: str) -> str:
    ident = ["-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]
    return run(["git", *ident, *args], repo)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", IMAGE_SIZE, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_revision(repo: Path, rev: dict) -> None:
    plots = repo / "dvclive" / "plots"
    for sub in ("metrics/train", "sklearn", "custom", "images"):
        (plots / sub).mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{step}\t{loss}\n" for step, loss in enumerate(rev["loss"]))
    (plots / "metrics/train/loss.tsv").write_text("step\tloss\n" + rows)  # DVCLive's metric TSV
    pairs = [{"actual": a, "predicted": p} for a, p in rev["confusion"]]
    (plots / "sklearn/confusion_matrix.json").write_text(json.dumps({"confusion_matrix": pairs}))
    (plots / "custom/iou.json").write_text(json.dumps([{"class": c, "iou": v} for c, v in rev["iou"].items()]))
    (plots / "images/prototype.png").write_bytes(png_bytes(rev["colour"]))


def configured_template() -> Path:
    """The repository's plots.html_template, resolved as DVC does: a relative path is taken from `.dvc/`."""
    value = ConfigObj(str(ROOT / ".dvc" / "config")).get("plots", {}).get("html_template")
    assert value, ".dvc/config has no [plots] html_template; set it to ../tools/plots/template.html"
    return (ROOT / ".dvc" / value).resolve()


def chromium(page: Path, profile: Path, screenshot: Path | None = None) -> subprocess.Popen:
    """Start headless Chromium on `page`; it prints the DOM once scripts have run."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network, whatever the machine has
           "--hide-scrollbars", "--virtual-time-budget=10000", "--dump-dom"]
    if screenshot is not None:
        cmd += [f"--screenshot={screenshot}", "--window-size=1280,2000"]
    return subprocess.Popen([*cmd, page.as_uri()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rendered_dom(proc: subprocess.Popen, page: Path) -> Node:
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0 and "<body" in out, f"chromium failed on {page}:\n{err[-3000:]}"
    return parse(out)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots_offline")
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    config = ConfigObj(str(repo / ".dvc" / "config"))
    config["plots"] = {"html_template": str(configured_template())}  # absolute: the real template
    config.write()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_revision(repo, REV1)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    write_revision(repo, REV2)
    git(repo, "commit", "-q", "-a", "-m", "second")

    default_page = tmp / "dvc_default_page.html"
    default_page.write_text(PAGE_HTML)  # DVC's own page: vega & co. from a CDN
    result = {}
    for name, args in {
        "show": ["show"],
        "diff": ["diff", "HEAD~1", "HEAD"],
        "default": ["show", "--html-template", str(default_page)],
    }.items():
        dvc(repo, "plots", *args, "-o", str(tmp / name))
        index = tmp / name / "index.html"
        result[name] = {"index": index, "page": parse(index.read_text(encoding="utf8"))}
    return result


@pytest.fixture(scope="module")
def rendered(pages, tmp_path_factory):
    """Each page opened in headless Chromium: the DOM after scripts ran, and a screenshot of ours."""
    tmp = tmp_path_factory.mktemp("chromium")
    procs = {}
    for name, entry in pages.items():  # the three pages at once
        entry["screenshot"] = None if name == "default" else tmp / f"{name}.png"
        procs[name] = chromium(entry["index"], tmp / f"profile-{name}", entry["screenshot"])
    for name, entry in pages.items():
        entry["dom"] = rendered_dom(procs[name], entry["index"])
    return pages


# ---------------------------------------------------------------------------------------------------------
# what each page should show, computed from the plotted data


EXPECTED_REVS = {"show": {"workspace": REV2}, "diff": {"HEAD~1": REV1, "HEAD": REV2}}


def vega_div(entry: dict, suffix: str) -> Node:
    (div_id,) = [i for i in vega_div_ids(entry["page"]) if i.endswith(suffix)]
    return by_id(entry["dom"], div_id)


def check_curve(div: Node, revs: dict[str, dict]) -> None:
    steps = {step for rev in revs.values() for step in range(len(rev["loss"]))}
    assert {int(m["step"]) for m in mark_data(div, "rule mark")} == steps
    last = {(name, len(rev["loss"]) - 1, rev["loss"][-1]) for name, rev in revs.items()}
    assert {(m["rev"], int(m["step"]), float(m["loss"])) for m in mark_data(div, "circle")} == last
    lines = [n for n in div.iter() if n.attrs.get("aria-roledescription") == "line mark"]
    vertices = Counter((n.attrs["aria-label"].split("rev: ")[-1], n.attrs["d"].count("L") + 1) for n in lines)
    assert vertices == Counter({(name, len(rev["loss"])): 2 for name, rev in revs.items()})  # raw + smoothed


def check_confusion(div: Node, revs: dict[str, dict]) -> None:
    expected = Counter()
    for rev in revs.values():
        counts = Counter(rev["confusion"])
        classes = sorted({c for pair in rev["confusion"] for c in pair})
        expected.update((a, p, counts[(a, p)]) for a in classes for p in classes)
    drawn = Counter((m["actual"], m["predicted"], int(m["xy_count"])) for m in mark_data(div, "text mark"))
    assert drawn == expected


def check_bars(div: Node, revs: dict[str, dict]) -> None:
    expected = {(name, cls, v) for name, rev in revs.items() for cls, v in rev["iou"].items()}
    assert {(m["rev"], m["class"], float(m["iou"])) for m in mark_data(div, "bar")} == expected


def check_images(entry: dict, revs: dict[str, dict]) -> None:
    shown = {}
    for node in entry["dom"].iter():
        titles = [c.text.strip() for c in node.children if c.tag == "p"]
        images = [c for c in node.children if c.tag == "img"]
        if images:
            shown[titles[0]] = (entry["index"].parent / images[0].attrs["src"]).read_bytes()
    assert shown == {name: png_bytes(rev["colour"]) for name, rev in revs.items()}


def check_screenshot(path: Path, revs: dict[str, dict]) -> None:
    pixels = {colour: n for n, colour in Image.open(path).convert("RGB").getcolors(1 << 24)}
    for rev in revs.values():  # each revision's image, at its own size
        assert pixels.get(rev["colour"], 0) >= 0.9 * IMAGE_SIZE[0] * IMAGE_SIZE[1], f"{path}: image not drawn"
    for colour in REV_COLOURS[: len(revs)]:  # curves and bars in the revisions' colours
        assert pixels.get(colour, 0) > 1000, f"{path}: no chart drawn in {colour}"


def check_page(entry: dict, revs: dict[str, dict]) -> None:
    ids = vega_div_ids(entry["page"])
    assert len(ids) == 3
    for div_id in ids:
        charts = drawn_charts(by_id(entry["dom"], div_id))
        assert len(charts) == 1, f"plot {div_id} was not drawn: {len(charts)} svg charts"
        assert not [n for n in by_id(entry["dom"], div_id).iter() if "plot-error" in n.attrs.get("class", "")]
    check_curve(vega_div(entry, "loss_tsv"), revs)
    check_confusion(vega_div(entry, "confusion_matrix_json"), revs)
    check_bars(vega_div(entry, "iou_json"), revs)
    check_images(entry, revs)
    check_screenshot(entry["screenshot"], revs)


# ---------------------------------------------------------------------------------------------------------
# tests


def test_repo_config_points_dvc_at_the_offline_template():
    assert configured_template() == PLOTS_TOOL / "template.html"
    assert configured_template().is_file()


@pytest.mark.slow  # runs the template tool
def test_template_is_up_to_date_with_its_source_and_vendored_libraries(tmp_path):
    tool = [sys.executable, "tools/plots/build_template.py", "--check"]
    run(tool, ROOT)  # also checks the vendored versions are the ones the installed DVC expects
    shutil.copytree(PLOTS_TOOL, tmp_path / "tools" / "plots")
    source = tmp_path / "tools/plots/page.in.html"
    original = source.read_text()
    source.write_text(original.replace("<title>DVC plots</title>", "<title>edited</title>"))
    stale = subprocess.run(tool, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert stale.returncode != 0 and "template.html is out of date" in stale.stderr
    source.write_text(original)
    with open(tmp_path / "tools/plots/vendor/vega/vega.min.js", "a") as f:
        f.write(";")
    tampered = subprocess.run(tool, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert tampered.returncode != 0 and "vega.min.js does not match the sha256" in tampered.stderr


@pytest.mark.slow  # dvc plots in a tiny repository
def test_pages_load_nothing_from_the_network(pages):
    def remote(entry):
        return [(n.tag, v) for n in entry["page"].iter() for k, v in n.attrs.items()
                if k in ("src", "href") and v.startswith(("http:", "https:", "//"))]

    versions = json.loads((PLOTS_TOOL / "vendor" / "versions.json").read_text())
    footer = "Drawn offline with " + ", ".join(f"{n} {versions[n]['version']}" for n in versions)
    for name in ("show", "diff"):
        assert remote(pages[name]) == []
        assert footer in pages[name]["index"].read_text(encoding="utf8")
    assert {tag for tag, _ in remote(pages["default"])} == {"script"}  # the check sees a CDN page


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_show_page_draws_every_plot_offline(rendered):
    check_page(rendered["show"], EXPECTED_REVS["show"])


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_diff_page_draws_both_revisions_offline(rendered):
    check_page(rendered["diff"], EXPECTED_REVS["diff"])


@needs_chromium
@pytest.mark.slow  # headless Chromium
def test_control_dvc_default_page_stays_blank_offline(rendered):
    entry = rendered["default"]
    ids = vega_div_ids(entry["page"])
    assert len(ids) == 3
    assert all(drawn_charts(by_id(entry["dom"], div_id)) == [] for div_id in ids)
