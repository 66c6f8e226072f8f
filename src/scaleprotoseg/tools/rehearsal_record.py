"""The record of a rehearsal (`rehearse.py`): per stage its time, memory and outputs (`StageRun`), saved as
`rehearsal/<preset>.json` and `.md` after each stage, and the tables made of it: one preset's (`table`),
several presets' side by side (`overview`), and the README's (`fill_readme`, between its markers)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_path


@dataclass
class StageRun:
    stage: str
    seconds: float | None       # None (also the two below): run before a `--resume` that had no record of it
    max_rss_mb: float | None    # the largest single process (kernel, worker) of the stage: exact
    peak_pss_mb: float | None   # all the stage's processes together: sampled
    gpu_peak_mb: float | None   # the largest peak of one process, on a GPU
    output_mb: float
    largest_file: str
    largest_file_mb: float
    units: int                  # steps (training) or images (evaluation, interpretability) it processed
    unit: str
    detail: str = ""            # the stage's own timings (per phase, pass), from what it wrote (`details`)


@dataclass
class Rehearsal:
    preset: str
    device: str
    image_size: tuple
    train_images: int
    val_images: int
    stages: list[StageRun] = field(default_factory=list)
    complete: bool = False      # every stage ran; saved after each stage, so an interrupted rehearsal keeps its rows


def table(r: Rehearsal) -> str:
    gpu = any(s.gpu_peak_mb is not None for s in r.stages)
    head = ["stage", "wall s", "s / unit", "the stage's own timing", "max RSS GB", "all processes GB",
            *(["GPU peak GB"] if gpu else []), "outputs MB", "largest output"]
    lines = [f"**{r.preset}** ({r.image_size[0]}×{r.image_size[1]} images, {r.train_images} train / {r.val_images} val, "
             f"{r.device})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in r.stages:
        per = f"{s.seconds / s.units:.1f} s/{s.unit}" if s.units and s.seconds is not None else ""
        row = [s.stage, _num(s.seconds, 1, ".0f"), per, s.detail, _num(s.max_rss_mb, 1024, ".2f"),
               _num(s.peak_pss_mb, 1024, ".2f"),
               *([f"{s.gpu_peak_mb / 1024:.2f}" if s.gpu_peak_mb is not None else ""] if gpu else []),
               f"{s.output_mb:.1f}", f"{Path(s.largest_file).name} ({s.largest_file_mb:.1f} MB)" if s.largest_file else ""]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Total {_total(r)}."]
    return "\n".join(lines)


def _num(v: float | None, div: float, fmt: str) -> str:
    return "—" if v is None else format(v / div, fmt)


def _total(r: Rehearsal, short: bool = False) -> str:
    """The whole rehearsal's minutes and largest process, saying what is unknown or not yet run."""
    known = [s for s in r.stages if s.seconds is not None]
    rss = max((s.max_rss_mb for s in known), default=0) / 1024
    text = (f"{sum(s.seconds for s in known) / 60:.0f} min, {rss:.1f} GB" if short else
            f"{sum(s.seconds for s in known) / 60:.1f} min; largest process {rss:.2f} GB")
    missing = len(r.stages) - len(known)
    if missing:
        n = f"{missing} stage{'s' if missing > 1 else ''}"
        text += f" ({n} before a resume not measured)" if not short else f" ({n} unmeasured)"
    if not r.complete:
        text += f"; stopped after {len(r.stages)} stages" if not short else "; incomplete"
    return text


# The overview's rows: (label, stage name before '@', method or None for any), the slowest matching stage shown.
OVERVIEW = (("prepare", "prepare", None), ("train deeplab", "train", "deeplab"), ("train protoseg", "train", "protoseg"),
            ("train scaleprotoseg", "train", "scaleprotoseg"), ("groups", "groups", None),
            ("project protoseg", "project", "protoseg"), ("project scaleprotoseg", "project", "scaleprotoseg"),
            ("project groups", "project_groups", None), ("evaluate (slowest method)", "evaluate*", None),
            ("interpret (slowest method)", "interpret*", None), ("report", "report", None),
            ("package (largest)", "package*", None))


def overview(results: list[Rehearsal]) -> str:
    """One table for several presets: per kind of stage, the stage's own timing per unit (else its wall time
    per unit), the largest process, the outputs on disk."""
    head = ["stage", *[f"{r.preset} ({r.image_size[0]}×{r.image_size[1]})" for r in results]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, name, method in OVERVIEW:
        cells = []
        for r in results:
            def match(s, name=name, method=method):
                stage, _, item = s.stage.partition("@")
                ok = stage in (name.rstrip("*"), name.rstrip("*") + "_groups") if name.endswith("*") else stage == name
                return ok and (method is None or item.rsplit("-", 1)[0] == method)
            found = [s for s in r.stages if match(s)]
            if not found:
                cells.append("—")
                continue
            s = max(found, key=lambda s: s.seconds or 0)
            per = s.detail or ("" if s.seconds is None else f"{s.seconds / s.units:.0f} s/{s.unit}" if s.units
                               else f"{s.seconds:.0f} s")
            big = max(found, key=lambda s: s.output_mb)
            rss = [x.max_rss_mb for x in found if x.max_rss_mb is not None]
            cells.append(", ".join(x for x in (per, f"{max(rss) / 1024:.1f} GB" if rss else "memory not measured",
                                               f"{big.output_mb:.0f} MB") if x))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [_total(r, short=True) for r in results]
    lines.append("| **whole pipeline** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


README_MARKERS = ("<!-- rehearsal tables: begin -->", "<!-- rehearsal tables: end -->")


def fill_readme(readme: Path, done: list[Rehearsal]) -> None:
    """Replace the text between the README's markers with the overview and, folded, each preset's table."""
    parts = [overview(done), ""]
    for r in done:
        parts += [f"<details><summary>Every stage of the {r.preset} rehearsal</summary>", "", table(r), "",
                  "</details>", ""]
    text = readme.read_text()
    start, end = README_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{readme}: expected one {start} before one {end}; the README is left as it was")
    head, rest = text.split(start)
    text = head + start + "\n" + "\n".join(parts).rstrip() + "\n" + end + rest.split(end, 1)[1]
    with atomic_path(readme) as tmp:
        tmp.write_text(text)


def load(path: Path) -> Rehearsal:
    d = json.loads(Path(path).read_text())
    d.setdefault("complete", True)  # written whole, at the end, before records were saved per stage
    return Rehearsal(**{**d, "image_size": tuple(d["image_size"]), "stages": [StageRun(**s) for s in d["stages"]]})


def save(r: Rehearsal, work: Path) -> None:
    with atomic_path(work / f"{r.preset}.json") as tmp:
        tmp.write_text(json.dumps(asdict(r), indent=1))
    with atomic_path(work / f"{r.preset}.md") as tmp:
        tmp.write_text(table(r) + "\n")
