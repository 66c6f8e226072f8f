"""Panoptic-parts uid files (Cityscapes- and Pascal-Panoptic-Parts) → part masks local to each class.

The label format (panoptic-parts.readthedocs.io, "Label format"; `panoptic_parts/utils/format.py`): a uid has
up to 7 digits, sid (1–2 digits) · iid (3) · pid (2). 1–2 digit uids are semantic only (sid), 4–5 digits
sid·1000 + iid, 6–7 digits sid·100000 + iid·100 + pid. Nothing else is a uid: a negative value, a 3-digit
value (it would mean sid 0 with an instance) or one above 9,999,999 stops the preparation with the file's
name — as the package's own `decode_uids` refuses them — instead of being decoded as something else.
Void: uid 0 is Pascal-Panoptic-Parts' unlabeled class (Cityscapes' own void labelIds are used as they are);
pid 0 is the void part of any class.

Every part id > 0 must be declared for its semantic class, else the file is named in a DataError:
- Cityscapes: person, rider (sids 24, 25) have pids 1..4, car, truck, bus (26..28) pids 1..5 and no other
  class has parts (the dataset's README in panoptic_parts, dataset_v2.0). That README also says pid 5 of a
  person or rider is a preprocessing artefact of about ten files, to be read as the void part: it is.
- Pascal: `parts.yaml` (the package's `ppp_datasetspec.yaml`). A scene class's sid is its position in
  `scene_class2part_classes` (UNLABELED = 0 first), a part's pid its position in the class's list (1..n),
  and `countable_pids_groupings` adds the raw pids of countable fine parts (e.g. a car's wheels) — as the
  package's `DatasetSpec` maps file pids (positions first, groupings over them). Only VOC's 20 classes have
  parts in the prepared format; declared parts of the other scene classes give no part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .class_names import CITYSCAPES_CLASSES, CITYSCAPES_LABELID_TO_TRAINID, CITYSCAPES_PARTS, PASCAL_CLASSES

UID_FORMAT = ("uids of 1–2 digits (sid), 4–5 digits (sid·1000 + iid) or 6–7 digits (sid·100000 + iid·100 + pid), "
              "i.e. 0..99, 1000..99999 or 100000..9999999 (panoptic-parts.readthedocs.io, 'Label format')")


def invalid_uids(uids: np.ndarray) -> np.ndarray:
    """Where `uids` fit no format of the specification: negative, 3 digits, or more than 7 digits."""
    u = np.asarray(uids, dtype=np.int64)
    return (u < 0) | ((u >= 100) & (u <= 999)) | (u > 9_999_999)


def decode_uids(uids: np.ndarray, where: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Panoptic-parts uids → (semantic ids, instance ids, part ids), −1 where absent.

    Values that fit no format raise a DataError naming `where` (the file) and a few of them. (The
    `panoptic_parts` package implements the same decoding, but fails to import on Python ≥ 3.10: it parses
    the version as a float.)"""
    u = np.asarray(uids, dtype=np.int64)
    bad = invalid_uids(u)
    if bad.any():
        shown = np.unique(u[bad])[:5].tolist()
        raise DataError(f"{where or 'uids'}: values {shown} fit no panoptic-parts uid format; expected {UID_FORMAT}.")
    sid = np.where(u <= 99, u, np.where(u <= 99_999, u // 1000, u // 100_000))
    iid = np.where(u <= 99, -1, np.where(u <= 99_999, u % 1000, (u // 100) % 1000))
    pid = np.where(u <= 99_999, -1, u % 100)
    return sid, iid, pid


def read_uids(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A panoptic-parts uid TIFF/PNG → `decode_uids` of its values."""
    try:
        with Image.open(path) as img:
            values = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path} is not a readable panoptic-parts file ({exc}).") from exc
    return decode_uids(values, where=path)


def parts_from_uids(path: Path, table: np.ndarray, spec: str, scene_names: dict[int, str] | None = None) -> np.ndarray:
    """A uid file → uint8 part index within the pixel's class (0 = no part) with `table`, a (100, 100) array
    (sid, pid) → part index, −1 where the pair is not declared: such pairs raise a DataError naming `path`."""
    sid, _, pid = read_uids(path)
    out = np.zeros(sid.shape, np.uint8)
    has = pid > 0  # pid 0 = the void part, −1 = no part information
    if not has.any():
        return out
    got = table[sid[has], pid[has]]
    bad = got < 0
    if bad.any():
        pairs = sorted({(int(s), int(p)) for s, p in zip(sid[has][bad], pid[has][bad])})
        shown = "; ".join(_describe(s, p, table, scene_names or {}) for s, p in pairs[:5])
        raise DataError(f"{path}: {len(pairs)} (semantic id, part id) pair(s) not declared by {spec}: {shown}.")
    out[has] = got
    return out


def _describe(sid: int, pid: int, table: np.ndarray, names: dict[int, str]) -> str:
    declared = [int(p) for p in np.nonzero(table[sid] >= 0)[0] if p > 0]
    name = f" ({names[sid]})" if sid in names else ""
    return f"sid {sid}{name} pid {pid}, declared pids {_ranges(declared) or 'none'}"


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 20, 21] → '1–3, 20–21'."""
    out, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(v) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(out)


def _cityscapes_table() -> np.ndarray:
    table = np.full((100, 100), -1, np.int16)
    table[:, 0] = 0
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        n = len(CITYSCAPES_PARTS.get(CITYSCAPES_CLASSES[train_id], ()))
        table[label_id, 1 : n + 1] = np.arange(1, n + 1)
        if n == 4:  # person, rider: pid 5 is a known artefact of ~10 files, read as the void part (README)
            table[label_id, 5] = 0
    return table


CITYSCAPES_PART_TABLE = _cityscapes_table()
_CITYSCAPES_SPEC = "Cityscapes-Panoptic-Parts (person, rider: pids 1..4; car, truck, bus: 1..5; no other class)"
_CITYSCAPES_NAMES = {k: CITYSCAPES_CLASSES[v] for k, v in CITYSCAPES_LABELID_TO_TRAINID.items()}


def read_panoptic_parts(path: Path) -> np.ndarray:
    """A Cityscapes-Panoptic-Parts uid file → uint8 part ids, local to each class already (0 = no part)."""
    return parts_from_uids(path, CITYSCAPES_PART_TABLE, _CITYSCAPES_SPEC, _CITYSCAPES_NAMES)


def pascal_part_table(spec: dict, where: Path) -> tuple[dict[str, tuple[str, ...]], np.ndarray]:
    """`parts.yaml` (Pascal-Panoptic-Parts' dataset spec) → (VOC class → part names, a (100, 100) int16 table
    (semantic id, file part id) → part index within the VOC class, 0 for other scene classes' parts, −1 for
    pairs the spec does not declare).

    The spec lists the scene classes in order (semantic id = position + 1, UNLABELED = 0); the first 20 are
    VOC's, in VOC's order (its `table` is VOC's `diningtable`)."""
    classes = spec.get("scene_class2part_classes") if isinstance(spec, dict) else None
    groups = (spec.get("countable_pids_groupings") or {}) if isinstance(spec, dict) else {}
    if not isinstance(classes, dict) or not isinstance(groups, dict):
        raise DataError(f"{where}: expected the mappings `scene_class2part_classes` (and optional "
                        "`countable_pids_groupings`) of panoptic_parts' ppp_datasetspec.yaml.")
    names = [n for n in classes if str(n).upper() != "UNLABELED"]
    voc = ["diningtable" if n == "table" else n for n in names[:20]]
    if voc != list(PASCAL_CLASSES[1:]):
        raise DataError(f"{where}: the first 20 scene classes must be VOC's in VOC order "
                        f"({', '.join(PASCAL_CLASSES[1:4])}, …); got {voc[:4]}…")
    if len(names) > 99:
        raise DataError(f"{where}: {len(names)} scene classes; semantic ids have 2 digits (at most 99 classes).")
    table = np.full((100, 100), -1, np.int16)
    table[: len(names) + 1, 0] = 0  # pid 0: the void part of every declared class
    parts = {}
    for sid, name in enumerate(names, start=1):
        plist = [str(p) for p in (classes[name] or []) if str(p).upper() != "UNLABELED"]
        if plist and sid <= 20:
            parts[voc[sid - 1]] = tuple(plist)
        for pos, part in enumerate(plist, start=1):
            table[sid, pos] = pos if sid <= 20 else 0
        for pos, part in enumerate(plist, start=1):
            for raw in (groups.get(name) or {}).get(part, []):
                if not 0 < int(raw) < 100:
                    raise DataError(f"{where}: {name}/{part}: raw part id {raw} is outside 1..99.")
                table[sid, int(raw)] = pos if sid <= 20 else 0
    return parts, table


def read_pascal_parts(path: Path, table: np.ndarray, scene_names: dict[int, str] | None = None) -> np.ndarray:
    """A Pascal-Panoptic-Parts uid TIFF → uint8 part index within the pixel's VOC class (0 = no part)."""
    return parts_from_uids(path, table, "parts.yaml", scene_names)


def pascal_panoptic_parts(root: Path):
    """Optional Pascal-Panoptic-Parts beside VOC: `labels/<any split folder>/<id>.tif` and `parts.yaml` →
    (id → uid file, VOC class → part names, part reader, spec path), all empty/None without labels/."""
    tifs = {p.stem: p for p in sorted((root / "labels").glob("*/*.tif"))} if (root / "labels").is_dir() else {}
    if not tifs:
        return {}, {}, None, None
    spec_path = root / "parts.yaml"
    if not spec_path.is_file():
        raise DataError(f"{root}: Pascal-Panoptic-Parts labels/ found but {spec_path.name} is missing: copy "
                        "panoptic_parts/specs/dataset_specs/ppp_datasetspec.yaml there as parts.yaml (README).")
    import yaml

    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"{spec_path} is not valid YAML ({exc}).") from exc
    parts, table = pascal_part_table(spec, spec_path)
    names = {sid: str(n) for sid, n in enumerate((n for n in spec["scene_class2part_classes"]
                                                  if str(n).upper() != "UNLABELED"), start=1)}
    return tifs, parts, lambda p: read_pascal_parts(p, table, names), spec_path
