"""Class names full of markup reach no page as code (issue 26): the `dvc plots show` page (project template,
per-class plot data written by `stage_metrics.write_results`), the explorer's JSON block and the notebook's
explorer view. Pages are opened in headless Chromium (skipped without it) and must not have run the names;
the HTML-level checks run everywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from scaleprotoseg.explain.explorer import script_json
from scaleprotoseg.stage_metrics import write_results

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)")
HOSTILE = ["</script><script>window.__pwned=1</script>", "\"'><img src=x onerror=window.__pwned=1>",
           "<!--<script>", "a & b \u2028 c"]
PROBE = ("<script>window.addEventListener('load', () => setTimeout(() => {"
         "const p = document.createElement('pre'); p.id = 'probe'; p.textContent = 'pwned=' + String(window.__pwned);"
         "document.body.appendChild(p);}, 3000));</script>")


class Scripts(HTMLParser):
    """The page's <script> elements (their text) and every element with an on* attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.scripts, self.handlers, self._in = [], [], False

    def handle_starttag(self, tag, attrs):
        if any(k.startswith("on") for k, _ in attrs):
            self.handlers.append((tag, attrs))
        if tag == "script":
            self.scripts.append("")
            self._in = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in = False

    def handle_data(self, data):
        if self._in:
            self.scripts[-1] += data


def scripts_of(html: str) -> Scripts:
    parser = Scripts()
    parser.feed(html)
    return parser


def with_probe(page: Path) -> Path:
    """A copy of `page` that writes `pwned=<window.__pwned>` into the DOM after its scripts ran."""
    html = page.read_text(encoding="utf8")
    probed = page.with_name(page.stem + "_probed.html")
    probed.write_text(html.replace("<head>", "<head>" + PROBE, 1), encoding="utf8")
    return probed


def rendered(page: Path, profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", "--no-proxy-server",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<body" in out.stdout, out.stderr[-2000:]
    return out.stdout


def assert_not_run(page: Path, tmp_path: Path) -> str:
    dom = rendered(with_probe(page), tmp_path / f"profile-{page.stem}")
    assert 'id="probe"' in dom, "the probe script did not run: the page was not rendered"
    assert "pwned=undefined" in dom, "a class name ran as code"
    assert "<img src=\"x\"" not in dom  # no element injected from a name
    return dom


def test_script_json_escapes_every_character_that_could_leave_the_block():
    text = script_json({"names": HOSTILE})
    assert not any(c in text for c in "<>&\u2028\u2029")
    assert json.loads(text) == {"names": HOSTILE}


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory):
    """`dvc plots show` with the project's template on the per-class IoU data write_results writes."""
    tmp = tmp_path_factory.mktemp("hostile_plots")
    repo = tmp / "repo"
    repo.mkdir()
    env_run = lambda *cmd: subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True, timeout=180)
    env_run("git", "init", "-q")
    env_run(sys.executable, "-m", "dvc", "init", "-q")
    (repo / ".dvc" / "config").write_text(f"[core]\n    analytics = false\n[plots]\n    html_template = "
                                          f"{ROOT / 'tools' / 'plots' / 'template.html'}\n")
    rows = [{"class": c, "IoU %": 10.0 * (k + 1)} for k, c in enumerate(HOSTILE)]
    write_results(repo / "rep", {"miou": 1.0, "iou": {}}, "evaluate", plots={"per_class_iou": (rows, "IoU %", "class",
                                                                                              "bar_horizontal")})
    (repo / "dvc.yaml").write_text("plots:\n  - rep/dvclive/plots/custom/per_class_iou.json:\n"
                                   "      template: bar_horizontal\n      x: IoU %\n      y: class\n")
    env_run(sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp / "out"))
    return tmp / "out" / "index.html", repo


def test_plots_page_names_stay_data(plots_page):
    page, repo = plots_page
    written = json.loads((repo / "rep/dvclive/plots/custom/per_class_iou.json").read_text())
    assert [r["class"] for r in written][0] == "\uff1c/script\uff1e\uff1cscript\uff1ewindow.__pwned=1\uff1c/script\uff1e"
    html = page.read_text(encoding="utf8")
    parsed = scripts_of(html)
    assert not parsed.handlers
    assert not [s for s in parsed.scripts if "__pwned" in s and "vegaEmbed" not in s]  # no script made of a name
    assert "</script><script>window.__pwned" not in html


@needs_chromium
def test_plots_page_in_chromium_runs_no_name(plots_page, tmp_path):
    dom = assert_not_run(plots_page[0], tmp_path)
    assert "<svg" in dom and "window.__pwned=1" in dom  # the chart is drawn, the name shown as text


def _explorer_page(tmp_path) -> Path:
    """The explorer's page with a data record whose class and prototype names are hostile (as write_explorer
    fills it: PAGE with the escaped title and script_json of the record)."""
    from scaleprotoseg.explain.explorer import _html_escape
    from scaleprotoseg.explain.page import PAGE

    data = {"classes": HOSTILE, "protos": [{"name": f"{c}/s0/0"} for c in HOSTILE], "images": []}
    page = tmp_path / "explorer.html"
    page.write_text(PAGE.replace("__TITLE__", _html_escape(HOSTILE[0])).replace("__DATA__", script_json(data)),
                    encoding="utf8")
    return page


def test_explorer_page_keeps_names_in_its_json_block(tmp_path):
    html = _explorer_page(tmp_path).read_text(encoding="utf8")
    parsed = scripts_of(html)
    assert len(parsed.scripts) == 2 and not parsed.handlers  # the JSON block and the page's own code
    assert json.loads(parsed.scripts[0])["classes"] == HOSTILE


@needs_chromium
def test_explorer_in_chromium_runs_no_name(tmp_path):
    dom = assert_not_run(_explorer_page(tmp_path), tmp_path)
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1" in dom  # the title, as text


def test_notebook_explorer_view_quotes_the_path(tmp_path):
    from scaleprotoseg.stages.interpret import explorer_view

    report = tmp_path / "x\"><img src=x onerror=window.__pwned=1>"
    report.mkdir()
    (report / "explorer.html").write_text("<p>explorer</p>")
    link, frame = explorer_view(report, notebook_dir=tmp_path)
    for html in (link._repr_html_(), frame._repr_html_()):
        assert not scripts_of(html).handlers and "<img" not in html
    assert "%22%3E%3Cimg" in link._repr_html_()
    page = tmp_path / "view.html"
    page.write_text(f"<html><head></head><body>{link._repr_html_()}{frame._repr_html_()}</body></html>")
    if CHROMIUM is not None:
        assert_not_run(page, tmp_path)
