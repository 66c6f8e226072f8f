"""README's "Layout" tree names exactly the files and folders of src/scaleprotoseg/ (so adding, moving or
removing one without updating the tree fails here), and of tools/ and notebooks/; every other path it lists
at the top exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from scaleprotoseg.paths import repo_root

ROOT = repo_root(Path(__file__).parent)
PKG = ROOT / "src" / "scaleprotoseg"
ENTRY = re.compile(r"^(\S+)")
FILE = re.compile(r"(?<![\w./])([A-Za-z_][\w]*\.py)\b")


def tree_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```\n") + 4:]
    return block[: block.index("```")].splitlines()


def top_blocks(lines) -> dict[str, list[str]]:
    """Each entry at the left margin (its first word) → its lines (the entry's own and those indented under it)."""
    blocks: dict[str, list[str]] = {}
    key = None
    for line in lines:
        if line and not line[0].isspace():
            key = ENTRY.match(line).group(1)
            blocks[key] = [line[len(key):]]
        elif key is not None:
            blocks[key].append(line)
    return blocks


def listed_in(lines: list[str], indent: int) -> dict[str, set[str]]:
    """Inside one folder's block: the files and folders at `indent` spaces and what their lines name.
    '' → the folder's own files; 'x/' → the files named on x/'s lines."""
    out: dict[str, set[str]] = {"": set()}
    current = ""
    for line in lines:
        body = line[indent:] if line[:indent].isspace() or indent == 0 else line
        if line.startswith(" " * indent) and body and not body[0].isspace():
            first = body.split()[0]
            current = first if first.endswith("/") else ""
            if current:
                out.setdefault(current, set())
                body = body[len(first):]
        out[current] |= set(FILE.findall(body))
    return out


def real(folder: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"": {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
        out[sub.name + "/"] = {p.name for p in sub.rglob("*.py") if p.name != "__init__.py"}
    return out


def test_the_package_tree_lists_exactly_the_package_files():
    blocks = top_blocks(tree_lines())
    listed = listed_in(blocks["src/scaleprotoseg/"][1:], 2)
    assert listed == real(PKG), {k: (sorted(listed.get(k, set()) ^ v)) for k, v in real(PKG).items()
                                 if listed.get(k) != v} | {k: "no such folder" for k in listed.keys() - real(PKG).keys()}


def test_the_tools_and_notebooks_lines_list_exactly_those_folders():
    blocks = top_blocks(tree_lines())
    tools = " ".join(blocks["tools/"])
    names = set(FILE.findall(tools)) | set(re.findall(r"(?<![\w./])(\w+/)", tools))
    assert names == {p.name + ("/" if p.is_dir() else "") for p in (ROOT / "tools").iterdir()
                     if p.name != "__pycache__"}
    stems = set(re.findall(r"\b(\d\d_\w+)", " ".join(blocks["notebooks/"])))
    assert stems == {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}


def test_every_other_path_the_tree_names_at_the_top_is_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    lines = tree_lines()
    names = lines[0].split() + [ENTRY.match(l).group(1) for l in lines[1:] if l and not l[0].isspace()]
    outputs = {"artifacts/,", "reports/", "data/", "rehearsal/"}  # pipeline and rehearsal outputs, raw data: not in git
    for name in names:
        if name in outputs:
            continue
        assert any(f == name or f.startswith(name.rstrip("/") + "/") for f in tracked), f"README's tree names {name}"
