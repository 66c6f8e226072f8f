"""Segment a folder of images with a trained model (a package folder or a `model.pt`).

    python -m scaleprotoseg.predict --model artifacts/package/embedded/scaleprotoseg/seed-0 --images photos/ \\
        --out predictions/ [--overlay] [--strict] [--batch-size 4] [--device auto]

Each image (any size) goes through the evaluation transform the model was evaluated with (the preset's
`eval_size` / `eval_short_side` resize and its normalisation); its logits are upsampled bilinearly to the
image's size. Images of equal size are batched. Writes, atomically, into `--out`:

- `masks/<stem>.png`: the predicted mask as a palette PNG in the dataset's label values and colours;
- `overlays/<stem>.png` (`--overlay`): the image with the mask's colours blended in, half and half;
- `predictions.csv`: one row per file: its status (`ok` or `skipped: <why>`), size, the share of its pixels
  predicted as each class (`<class> %`) and, for prototype models, the share of its pixels each prototype
  (`won % <class>/s<scale>/<m>`) or group (`won % <class>/g<k>`) won: among the predicted class's own
  prototypes or groups, the largest contribution to that class's logit (similarity × last-layer weight, or
  group activation × head weight), decided at the model's feature resolution.

Every file is read first: unreadable files are listed by name and skipped (in the CSV and on the console),
or, with `--strict`, stop the run before anything is written. bf16 autocast where the model was trained in
bf16 and the device supports it (`device.resolve_precision`); CUDA when present.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .atomic import atomic_path, write_csv
from .data.readers import IMAGE_SUFFIXES
from .data.transforms import eval_transform
from .device import autocast, resolve_device, resolve_precision
from .errors import ConfigError, DataError, ScaleProtoSegError
from .progress import tqdm

SUFFIXES = (*IMAGE_SUFFIXES, ".webp")


def list_images(inputs) -> list[Path]:
    """The files to segment: each folder's files (sorted, not recursive, dotfiles left out) and each file."""
    out: list[Path] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        item = Path(item)
        if item.is_dir():
            out += sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            out.append(item)  # a missing file is reported like an unreadable one
    if not out:
        raise DataError(f"no files in {', '.join(str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs))}; "
                        "give --images a folder of images or image files.")
    return out


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of an image file, or a DataError naming it and why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: not an image file (suffix {path.suffix or 'none'}; expected one of {', '.join(SUFFIXES)})")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output stem per input file: its stem, or its full name when two files share a stem."""
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else p.name for p in paths]


def _palette_bytes(values, palette) -> list[int]:
    table = np.zeros((256, 3), np.uint8)
    for v, rgb in zip(values, palette):
        table[v] = rgb
    return table.ravel().tolist()


def winner_tables(model, classes) -> tuple[list[str], object] | None:
    """(names of the maps whose wins are counted, function sim → (B, K, h, w) winning map per class), or None
    for a model without prototypes."""
    if not hasattr(model, "prototypes"):
        return None
    from .models.prototypes import prototype_names

    K = len(classes)
    gh = model.group_head
    if gh is not None:
        G = gh.groups
        own = torch.stack([gh.head[c, c * G:(c + 1) * G] for c in range(K)]).detach()  # (K, G)

        def win(sim):
            acts = gh.group_activations(sim)
            contrib = acts.view(acts.shape[0], K, G, *acts.shape[-2:]) * own.to(acts)[None, :, :, None, None]
            return contrib.argmax(2) + torch.arange(K, device=acts.device)[None, :, None, None] * G
        return [f"{classes[c]}/g{g}" for c in range(K) for g in range(G)], win
    owner = model.prototypes.proto_class
    members = [torch.nonzero(owner == c).flatten() for c in range(K)]

    def win(sim):
        out = torch.full((sim.shape[0], K, *sim.shape[-2:]), -1, dtype=torch.long, device=sim.device)
        for c, idx in enumerate(members):
            if len(idx):
                w = model.last_layer[c, idx].detach().to(sim)
                out[:, c] = idx.to(sim.device)[(sim[:, idx] * w[None, :, None, None]).argmax(1)]
        return out
    return prototype_names(model, classes), win


@torch.no_grad()
def predict_batch(model, x: torch.Tensor, size, precision: str, winners=None):
    """(predicted classes (B, H, W), logits at feature resolution, winning map per class (B, K, h, w) or None)."""
    with autocast(x.device, precision):
        if hasattr(model, "prototypes"):
            out = model.head(model.features(x, training=False))
            logits, sim = out["logits"], out["similarities"]
        else:
            logits, sim = model.predict_logits(x), None
    logits = logits.float()
    pred = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    return pred, logits, (winners(sim) if winners is not None and sim is not None else None)


def _won(win: torch.Tensor, pred: torch.Tensor, n: int) -> np.ndarray:
    """% of the image's pixels each map won: the predicted class's winner at the pixel's feature cell
    (nearest: floor(y · h / H))."""
    _, h, w = win.shape
    H, W = pred.shape
    iy = torch.arange(H, device=pred.device) * h // H
    ix = torch.arange(W, device=pred.device) * w // W
    full = win[pred, iy[:, None], ix[None, :]]
    full = full[full >= 0]
    return 100.0 * np.bincount(full.cpu().numpy(), minlength=n)[:n] / pred.numel()


def predict_folder(model_path: str | Path, images, out_dir: str | Path, overlay: bool = False, strict: bool = False,
                   batch_size: int = 4, device: str = "auto", progress: bool = True, log=print) -> dict:
    """Segment `images` (folders and/or files) with the model of `model_path`; see the module docstring.
    Returns {"csv", "written", "skipped": [(file, why)], "seconds"}."""
    from PIL import Image

    from .package import load_any

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give at least 1.")
    t0 = time.perf_counter()
    files = list_images(images)
    sizes, bad = {}, []
    for p in files:  # every file is read before anything is written
        try:
            sizes[p] = read_rgb(p).shape[:2]
        except DataError as exc:
            bad.append((p, str(exc)))
    if bad and strict:
        raise DataError(f"{len(bad)} of {len(files)} files cannot be segmented (--strict: nothing written):\n"
                        + "\n".join(f"  {why}" for _, why in bad))
    for p, why in bad:
        log(f"skipped {why}")
    dev = resolve_device(device, key="--device")
    model, cfg, info = load_any(model_path, dev, "the pipeline (`dvc repro`)")
    precision = resolve_precision(cfg.precision, dev) if cfg.precision != "fp16" or dev.type == "cuda" else "fp32"
    classes = list(info["classes"])
    values = np.asarray(info["label_values"], np.uint8)
    colours = np.asarray(info["palette"], np.uint8)
    palette = _palette_bytes(values, colours)
    tables = winner_tables(model, classes)
    names = dict(zip(files, output_names(files)))
    out_dir = Path(out_dir)
    rows = {p: {"image": str(p), "status": f"skipped: {why.removeprefix(str(p) + ': ')}"} for p, why in bad}
    groups: dict[tuple, list[Path]] = {}
    for p, hw in sizes.items():
        groups.setdefault(tuple(hw), []).append(p)
    batches = [(hw, ps[i:i + batch_size]) for hw, ps in groups.items() for i in range(0, len(ps), batch_size)]
    bar = tqdm(total=len(sizes), desc="predict", unit="image", disable=not progress, dynamic_ncols=True)
    for hw, batch in batches:
        imgs, ok = [], []
        for p in batch:
            try:
                imgs.append(read_rgb(p))
                ok.append(p)
            except DataError as exc:  # changed since it was first read
                if strict:
                    raise
                rows[p] = {"image": str(p), "status": f"skipped: {str(exc).removeprefix(str(p) + ': ')}"}
                log(f"skipped {exc}")
        if not ok:
            continue
        x = torch.stack([eval_transform(im, cfg.data.eval_size, cfg.data.eval_short_side, cfg.data.mean, cfg.data.std)
                         for im in imgs]).to(dev)
        pred, _, win = predict_batch(model, x, hw, precision, tables[1] if tables else None)
        for j, (p, im) in enumerate(zip(ok, imgs)):
            k = pred[j].cpu().numpy().astype(np.uint8)
            mask = Image.fromarray(values[k], mode="P")
            mask.putpalette(palette)
            with atomic_path(out_dir / "masks" / f"{names[p]}.png") as tmp:
                mask.save(tmp, format="PNG")
            if overlay:
                blend = (0.5 * im.astype(np.float32) + 0.5 * colours[k].astype(np.float32)).round().astype(np.uint8)
                with atomic_path(out_dir / "overlays" / f"{names[p]}.png") as tmp:
                    Image.fromarray(blend).save(tmp, format="PNG")
            area = 100.0 * np.bincount(k.ravel(), minlength=len(classes))[: len(classes)] / k.size
            row = {"image": str(p), "status": "ok", "height": hw[0], "width": hw[1], "mask": f"masks/{names[p]}.png",
                   **{f"{c} %": round(float(a), 4) for c, a in zip(classes, area)}}
            if win is not None:
                row.update({f"won % {n}": round(float(v), 4) for n, v in zip(tables[0], _won(win[j], pred[j], len(tables[0])))})
            rows[p] = row
        bar.update(len(ok))
    bar.close()
    table = pd.DataFrame([rows[p] for p in files if p in rows]).set_index("image")
    for col in ("height", "width"):
        if col in table:
            table[col] = table[col].astype("Int64")  # integers, left empty for a skipped file
    csv = write_csv(table, out_dir / "predictions.csv")
    skipped = [(str(p), r["status"]) for p, r in rows.items() if r["status"] != "ok"]
    return {"csv": csv, "written": sum(r["status"] == "ok" for r in rows.values()), "skipped": skipped,
            "seconds": round(time.perf_counter() - t0, 2), "method": cfg.method, "precision": precision, "device": str(dev)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scaleprotoseg.predict", description=(
        "Segment a folder of images with a trained model: palette PNG masks in the dataset's label values, "
        "optional overlays, and a CSV of class areas (and of the pixels each prototype or group won)."))
    ap.add_argument("--model", required=True, help="a model package folder (artifacts/package/<dataset>/<method>/seed-<n>) or a model.pt")
    ap.add_argument("--images", required=True, nargs="+", help="folders of images and/or image files")
    ap.add_argument("--out", required=True, help="folder for masks/, overlays/ and predictions.csv")
    ap.add_argument("--overlay", action="store_true", help="also write the image with the mask blended in")
    ap.add_argument("--strict", action="store_true", help="stop, writing nothing, when a file cannot be read (default: skip it)")
    ap.add_argument("--batch-size", type=int, default=4, help="images of equal size per forward pass (default 4)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = ap.parse_args(argv)
    try:
        res = predict_folder(args.model, args.images, args.out, args.overlay, args.strict, args.batch_size, args.device,
                             log=lambda s: print(s, file=sys.stderr))
    except ScaleProtoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {res['written']} masks and {res['csv']} ({res['method']}, {res['device']}, {res['precision']}; "
          f"{res['seconds']} s)" + (f"; skipped {len(res['skipped'])}: {', '.join(f for f, _ in res['skipped'])}"
                                   if res["skipped"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
