"""Converting a raw dataset (`sources.Source`) into the prepared format, incrementally: a manifest records,
per sample, the raw files it came from (path, size, modification time) and the converter's version, so a
re-run converts only new or changed samples. The new folder replaces the old one atomically; files named by
the split lists but missing, or unreadable, stop it before anything is replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from ..errors import DataError
from .prepared import VOID, DatasetMeta
from .sources import Source


class Prepared(NamedTuple):
    meta: DatasetMeta
    skipped: list[str]  # ids left out because a file could not be read (skip_corrupt)
    converted: int  # samples decoded and written
    reused: int  # samples whose files were unchanged since the last preparation (kept as they were)


MANIFEST = "sources.json"  # per sample: the raw files it came from (path, size, mtime) → incremental re-runs


def _stat(paths) -> list:
    out = []
    for p in paths:
        if p is not None:
            st = Path(p).stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _converter_key(source: Source) -> str:
    """What every sample's conversion depends on besides its own files: the readers' and this code, the dataset's
    name and classes, and the shared files (classes file, parts spec)."""
    import hashlib

    h = hashlib.sha256()
    here = Path(__file__)
    for mod in (here, *(here.with_name(m) for m in ("sources.py", "readers.py", "prepared.py", "class_names.py",
                                                    "panoptic_parts.py"))):
        h.update(mod.read_bytes())
    h.update(json.dumps([source.name, list(source.classes), _stat(source.extra)]).encode())
    return h.hexdigest()[:16]


def _old_outputs(out: Path, key: str) -> dict:
    """The previous preparation's manifest entries, if it was made by the same converter."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest.get("samples", {}) if manifest.get("converter") == key else {}


def _reuse(out: Path, tmp: Path, entry: dict) -> bool:
    """Link (or copy) one unchanged sample's outputs from the previous preparation into `tmp`."""
    import os
    import shutil

    srcs = [out / rel for rel in entry.get("outputs", [])]
    if not srcs or not all(p.is_file() for p in srcs):
        return False
    for p in srcs:
        dst = tmp / p.relative_to(out)
        try:
            os.link(p, dst)
        except OSError:
            shutil.copy2(p, dst)
    return True


def _stored_as_is(path: Path) -> Path | None:
    """`path` if the prepared format can keep it byte for byte (a JPEG, or an 8-bit RGB PNG), else None."""
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return path
    if suffix == ".png":
        with Image.open(path) as img:
            return path if img.mode == "RGB" else None
    return None


def prepare_source(source: Source, out: Path, workers: int = 2, skip_corrupt: bool = False,
                   progress: bool = True) -> Prepared:
    """Convert `source` into the prepared format at `out` (atomically), `workers` files at a time.

    Every file the split lists name is checked first: missing files stop the stage with their list. A file
    that cannot be read stops it too, with the list of every such file — unless `skip_corrupt`, in which
    case those samples are left out and reported. A sample whose raw files (path, size, modification time)
    and converter are unchanged since the previous preparation at `out` is kept, not re-converted."""
    from concurrent.futures import ThreadPoolExecutor

    from ..atomic import atomic_dir
    from ..progress import tqdm
    from .prepared import save_sample

    missing = source.missing()
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:20])
        raise DataError(f"{len(missing)} file(s) named by the split lists are missing, e.g.\n  {shown}\n"
                        "Restore them or fix the split lists; nothing was written.")
    ids = sorted(source.files)
    out = Path(out)
    key = _converter_key(source)
    old = _old_outputs(out, key)

    def convert(sid: str, tmp: Path):
        fp = _stat(source.files[sid])
        if sid in old and old[sid].get("files") == fp and _reuse(out, tmp, old[sid]):
            return sid, {"files": fp, "outputs": old[sid]["outputs"]}, True
        try:
            image, label, parts = source.load(sid)
            bad = (label >= len(source.classes)) & (label != VOID)
            if bad.any():
                raise DataError(f"{source.files[sid][1]}: label values {sorted(set(label[bad].tolist()))[:10]} are not classes.")
            keep = _stored_as_is(source.files[sid][0]) if source.loader is None else None
            written = save_sample(tmp, sid, image, label, parts, original=keep)
            return sid, {"files": fp, "outputs": [str(p.relative_to(tmp)) for p in written]}, False
        except DataError as exc:
            return sid, str(exc), False

    with atomic_dir(out) as tmp:
        for sub in ("images", "labels", "parts"):
            (tmp / sub).mkdir()
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            results = list(tqdm(pool.map(lambda s: convert(s, tmp), ids), total=len(ids), desc=f"prepare {source.name}",
                                disable=not progress, leave=False))
        errors = {sid: r for sid, r, _ in results if isinstance(r, str)}
        if errors and not skip_corrupt:
            shown = "\n  ".join(errors.values())
            raise DataError(f"{len(errors)} file(s) could not be converted:\n  {shown}\n"
                            f"Fix or remove them, or set data_sources.{source.name}.skip_corrupt: true to leave them out.")
        splits = {k: tuple(i for i in v if i not in errors) for k, v in source.splits.items()}
        meta = DatasetMeta(name=source.name, classes=source.classes, splits=splits, parts=source.parts,
                           projection_split=source.projection_split)
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
        samples = {sid: r for sid, r, _ in results if not isinstance(r, str)}
        (tmp / MANIFEST).write_text(json.dumps({"converter": key, "samples": samples}) + "\n")
    reused = sum(1 for _, r, hit in results if hit)
    return Prepared(meta, sorted(errors), len(samples) - reused, reused)
