"""Class names of the raw datasets: fixed tables (VOC, Cityscapes) and the names files the releases ship.

- COCO-Stuff's `labels.txt` (github.com/nightrome/cocostuff) numbers the classes 1..182 with `0: unlabeled`,
  while the stuffthingmaps PNGs hold 0..181 (255 = void): PNG value v is `labels.txt` id v + 1. A file that
  does not follow that format stops preparation (DataError naming the line); a missing file gives the
  names `class_000`…`class_181` and a note.
- ADE20K's scene-parsing release names its 150 classes in `objectInfo150.txt` (columns `Idx Ratio Train Val
  Name`, a header line first; Name lists synonyms separated by commas, e.g. `building, edifice`); some
  mirrors ship `objectInfo150.csv` (`Idx,Ratio,Train,Val,Name`, synonyms separated by `;`, the Name field
  possibly quoted). Idx k (1..150) → class k − 1, named by its first synonym. A missing or malformed file
  gives the names `class_001`…`class_150` and a note saying why.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..errors import DataError
from .readers import read_text

PASCAL_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# labelId → train id (the 19 evaluation classes); every id not listed is void.
CITYSCAPES_LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# Cityscapes-Panoptic-Parts part ids (per class, 1-based) for the classes that have parts.
_HUMAN = ("torso", "head", "arms", "legs")
_VEHICLE = ("windows", "wheels", "lights", "license plate", "chassis")
CITYSCAPES_PARTS = {"person": _HUMAN, "rider": _HUMAN, "car": _VEHICLE, "truck": _VEHICLE, "bus": _VEHICLE}

COCO_STUFF_CLASSES = 182
ADE_CLASSES = 150
_COCO_LINE = re.compile(r"^\s*(\d+)\s*:\s*(\S.*?)\s*$")


def coco_stuff_names(root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the 182 class names for PNG values 0..181, notes) from `<root>/labels.txt`."""
    path = Path(root) / "labels.txt"
    if not path.is_file():
        note = (f"COCO-Stuff class names not found: labels.txt is missing from {root}; classes are named "
                "class_000…class_181 (put github.com/nightrome/cocostuff's labels.txt there for the names).")
        return tuple(f"class_{k:03d}" for k in range(COCO_STUFF_CLASSES)), (note,)
    expected = ("expected COCO-Stuff's labels.txt: one '<id>: <name>' line per class, '0: unlabeled' then "
                "'1: person' … '182: wood' (PNG value v is id v + 1)")
    table: dict[int, str] = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        m = _COCO_LINE.match(line)
        if m is None or int(m.group(1)) > COCO_STUFF_CLASSES or int(m.group(1)) in table:
            raise DataError(f"{path}, line {number}: {line.strip()!r} is not a new '<id>: <name>' with id "
                            f"0..{COCO_STUFF_CLASSES}; {expected}.")
        table[int(m.group(1))] = m.group(2)
    missing = [k for k in range(1, COCO_STUFF_CLASSES + 1) if k not in table]
    if missing:
        raise DataError(f"{path}: ids {missing[:10]}{' …' if len(missing) > 10 else ''} are missing; {expected}.")
    names = tuple(table[k] for k in range(1, COCO_STUFF_CLASSES + 1))
    _check_unique(names, path)
    return names, ()


def ade_names(base: Path, root: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the 150 class names, notes) from objectInfo150.txt/.csv in `base` (ADEChallengeData2016) or `root`."""
    fallback = tuple(f"class_{k:03d}" for k in range(1, ADE_CLASSES + 1))
    folders = list(dict.fromkeys([Path(base), Path(root)]))
    candidates = [d / f"objectInfo150{ext}" for d in folders for ext in (".txt", ".csv")]
    found = [p for p in candidates if p.is_file()]
    if not found:
        where = " or ".join(str(d) for d in folders)
        return fallback, (f"ADE20K class names not found: objectInfo150.txt (or .csv) is missing from {where}; "
                          "classes are named class_001…class_150.",)
    path = found[0]
    try:
        return _read_object_info(path), ()
    except DataError as exc:
        return fallback, (f"ADE20K class names not read: {exc} Classes are named class_001…class_150.",)


def _read_object_info(path: Path) -> tuple[str, ...]:
    """objectInfo150.txt (whitespace-separated) or .csv (the csv module: quoted names may hold commas)."""
    text = read_text(path)
    if path.suffix == ".csv":
        rows = [(r[0], ",".join(r[4:])) for r in csv.reader(text.splitlines()) if len(r) >= 5]
    else:
        rows = [(f[0], f[4]) for f in (line.split(None, 4) for line in text.splitlines()) if len(f) == 5]
    if rows and not rows[0][0].strip().isdigit():
        rows = rows[1:]  # the header line (Idx, Ratio, Train, Val, Name)
    names: dict[int, str] = {}
    for idx, name in rows:
        first = re.split(r"[;,]", name)[0].strip()
        if not idx.strip().isdigit() or not first or int(idx) in names:
            raise DataError(f"{path}: row {idx!r}, {name!r} is not a new 'Idx … Name' entry.")
        names[int(idx)] = first
    if sorted(names) != list(range(1, ADE_CLASSES + 1)):
        raise DataError(f"{path}: expected the Idx values 1..{ADE_CLASSES} once each (columns Idx, Ratio, Train, "
                        f"Val, Name after a header line), found {len(names)} entries.")
    out = tuple(names[k] for k in range(1, ADE_CLASSES + 1))
    _check_unique(out, path)
    return out


def _check_unique(names: tuple[str, ...], path: Path) -> None:
    seen = set()
    dup = [n for n in names if n in seen or seen.add(n)]
    if dup:
        raise DataError(f"{path}: class names must be unique (per-class results are keyed by name); repeated: {dup[:5]}.")


def folder_classes_file(root: Path) -> tuple[dict, Path]:
    for name in ("classes.json", "classes.yaml", "classes.yml"):
        path = root / name
        if path.is_file():
            text = read_text(path)
            try:
                if name.endswith(".json"):
                    spec = json.loads(text)
                else:
                    import yaml

                    spec = yaml.safe_load(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: {exc.msg}; expected a JSON object "
                                '{"names": [...]} (optional "values", "void", "parts").') from None
            except Exception as exc:  # noqa: BLE001 (yaml.YAMLError, imported lazily; its message carries the line)
                raise DataError(f"{path} is not valid YAML ({exc}); expected a mapping with `names`.") from None
            if not isinstance(spec, dict) or not isinstance(spec.get("names"), list) or not spec["names"]:
                raise DataError(f"{path}: expected a mapping with a non-empty list `names` (and optional `values`, `void`).")
            check_folder_spec(spec, path)
            return spec, path
    raise DataError(f"{root}: classes.json (or classes.yaml) is missing: list the class `names` (optional `values`, `void`).")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_folder_spec(spec: dict, path: Path) -> None:
    """Refuse a classes file that would corrupt the labels silently: names that are not distinct non-empty
    strings (per-class results are keyed by name), `values` that are not distinct integers 0..255 one per
    name (a value listed twice leaves a class without pixels), a `void` equal to a class value (the class
    would become void). Any other character is kept and shown literally (`a/b`, `cost $5`, `<b>`)."""
    names = spec["names"]
    for k, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise DataError(f"{path}: `names[{k}]` is {n!r}; every class name must be a non-empty string "
                            "(quote it in YAML, e.g. '1' or 'yes').")
    seen: dict[str, int] = {}
    for k, n in enumerate(names):
        if n in seen:
            raise DataError(f"{path}: `names` lists {n!r} twice (names[{seen[n]}] and names[{k}]); class names "
                            "must be unique: rename one, or give both the same class by merging their values.")
        seen[n] = k
    values = spec.get("values", list(range(len(names))))
    if not isinstance(values, list) or len(values) != len(names):
        raise DataError(f"{path}: `values` must list one mask value per name ({len(names)} names), got {values!r:.80}.")
    where: dict[int, int] = {}
    for k, v in enumerate(values):
        if not _is_int(v) or not 0 <= v <= 255:
            raise DataError(f"{path}: `values[{k}]` is {v!r}; mask values are integers 0..255.")
        if v in where:
            raise DataError(f"{path}: `values` lists {v} twice (for {names[where[v]]!r} and {names[k]!r}): the "
                            "second class would get no pixels; give each class its own mask value.")
        where[v] = k
    void = spec.get("void", 255)
    if not _is_int(void):
        raise DataError(f"{path}: `void` is {void!r}; it must be an integer mask value (default 255).")
    if void in where:
        raise DataError(f"{path}: `void` is {void}, the value of class {names[where[void]]!r} (`values`), so that "
                        "class would become void; choose another void value or another value for the class.")


def declared_parts(raw, names: list[str], spec_path: Path) -> dict[str, tuple[str, ...]]:
    """The classes file's `parts` → {class: part names}, checked: known classes, non-empty lists of names."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DataError(f"{spec_path}: `parts` must map class names to lists of part names, got {type(raw).__name__}.")
    out = {}
    for cls, plist in raw.items():
        if str(cls) not in names:
            raise DataError(f"{spec_path}: `parts` key {cls!r} is not one of the class `names` {names[:10]}.")
        if (not isinstance(plist, list) or not plist or len(plist) > 254 or len(set(map(str, plist))) != len(plist)
                or not all(isinstance(p, str) and p for p in plist)):
            raise DataError(f"{spec_path}: `parts.{cls}` must be a list of 1..254 distinct part names, got {plist!r}.")
        out[str(cls)] = tuple(plist)
    return out
