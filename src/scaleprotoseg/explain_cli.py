"""Explain any image file with a saved prototype model: `python -m scaleprotoseg.explain`.

    python -m scaleprotoseg.explain --checkpoint artifacts/project/scaleprotoseg_groups/seed-0/model.pt \\
        --image photo.jpg --out reports/explain [--gradcam artifacts/train/deeplab/seed-0/model.pt] \\
        [--size 512] [--classes 3] [--device auto]

The image (PNG, JPEG, any size) is shrunk so that its longer side is at most `--size` pixels and normalised
with the checkpoint's own mean and std; the checkpoint carries its configuration and class names, so nothing
else is read. Writes `<image stem>_explained.png` (the figure of `explain_figures.explanation_figure`) and
`<image stem>_explained.json` (what was explained, which groups/prototypes won how many pixels, which
prototypes decided) into `--out`, atomically. The source patches come from `patches.npz` beside the
checkpoint (written by the project stage); without it the figure says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import explain, explain_figures
from .artifacts import final_checkpoint, read_patches
from .config import PROTOTYPE_METHODS
from .data.transforms import normalise
from .errors import ArtifactError, ConfigError, DataError, ScaleProtoSegError
from .atomic import write_json
from .models.build import load_model
from .plots import save_figure
from .training.checkpoint import load_checkpoint
from .training.loop import resolve_device

WHERE_MODELS = ("a prototype model is the model.pt the project stage writes (artifacts/project/<method>/seed-<n>/), "
                "a DeepLab model the one the train stage writes (artifacts/train/deeplab/seed-<n>/)")


def read_image(path: str | Path, size: int = 512) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, shrunk (bilinear) so that its longer side is at most `size`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file; give --image the path of a PNG or JPEG image.")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if max(h, w) > size:
                scale = size / max(h, w)
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); give --image a PNG or JPEG file.") from exc


def _checkpoint(path: str | Path, option: str) -> dict:
    """The payload of a checkpoint of this project, or one clear error naming the file and what to give."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{option} {path}: no such checkpoint. Run the pipeline (`dvc repro`) first; {WHERE_MODELS}.")
    try:
        payload = load_checkpoint(path)
    except ArtifactError as exc:
        raise ArtifactError(f"{option} {path} is not a model checkpoint of this project "
                            f"({'unreadable as a PyTorch file' if exc.__cause__ else 'another format'}); "
                            f"{WHERE_MODELS}.") from exc
    return payload


def load_prototype_model(path: str | Path, device="cpu"):
    """(model, RunConfig, payload) of a prototype checkpoint; a DeepLab one is refused with the way to use it."""
    method = (_checkpoint(path, "--checkpoint").get("config") or {}).get("method")
    if method == "deeplab":
        raise ArtifactError(f"--checkpoint {path} is a DeepLab checkpoint: it has no prototypes to explain with. "
                            "Give --checkpoint a prototype model (protoseg, scaleprotoseg or scaleprotoseg_groups) "
                            "and pass this file as --gradcam to show its Grad-CAM maps beside it.")
    if method not in PROTOTYPE_METHODS:
        raise ArtifactError(f"--checkpoint {path} holds method {method!r}, not one of {list(PROTOTYPE_METHODS)}; "
                            f"{WHERE_MODELS}.")
    return load_model(path, device, "the project stage")


def load_gradcam_model(path: str | Path, device, classes, option: str = "--gradcam"):
    """The DeepLab for Grad-CAM (`option` names where its path came from, for the messages), which must
    predict the same classes as the prototype model."""
    method = (_checkpoint(path, option).get("config") or {}).get("method")
    if method != "deeplab":
        raise ArtifactError(f"{option} {path} is a {method} checkpoint; {option} takes a DeepLab one "
                            "(artifacts/train/deeplab/seed-<n>/model.pt).")
    model, _, payload = load_model(path, device, "the train stage")
    if list(payload["classes"]) != list(classes):
        raise ArtifactError(f"{option} {path} predicts {len(payload['classes'])} classes {list(payload['classes'])[:4]}…, "
                            f"the prototype model {len(classes)} {list(classes)[:4]}…; give the DeepLab of the same dataset.")
    return model


@dataclass
class ExplainResult:
    png: Path
    json: Path
    summary: dict


def explain_file(image: str | Path, checkpoint: str | Path, out_dir: str | Path, gradcam: str | Path | None = None,
                 size: int = 512, classes: int = 3, device: str = "auto") -> ExplainResult:
    """Explain `image` with the prototype model of `checkpoint` (and, with `gradcam`, a DeepLab's Grad-CAM):
    writes the figure and the JSON summary into `out_dir` and returns their paths and the summary."""
    if size < 16:
        raise ConfigError(f"--size {size} is too small; give at least 16 (pixels of the longer side).")
    if classes < 1:
        raise ConfigError(f"--classes {classes}: explain at least 1 class.")
    t0 = time.perf_counter()
    dev = resolve_device(device, key="--device")
    model, cfg, payload = load_prototype_model(checkpoint, dev)
    names = list(payload["classes"])
    cam_model = load_gradcam_model(gradcam, dev, names) if gradcam is not None else None
    rgb = read_image(image, size)
    x = normalise(rgb, cfg.data.mean, cfg.data.std)[None].to(dev)
    expl = explain.explain_input(model, rgb, x, names, max_classes=classes, gradcam_model=cam_model)
    patches = read_patches(Path(checkpoint).parent)
    fig = explain_figures.explanation_figure(expl, patches, title=f"{cfg.method}: why each class is predicted "
                                                                  f"({_short_name(image)})")
    stem = Path(image).stem
    out_dir = Path(out_dir)
    png, js = out_dir / f"{stem}_explained.png", out_dir / f"{stem}_explained.json"
    save_figure(fig, png)
    summary = {"image": str(image), "checkpoint": str(checkpoint), "method": cfg.method, "dataset": cfg.dataset,
               "gradcam": str(gradcam) if gradcam is not None else None,
               "source_patches": explain_figures.patches_note(patches, expl.n_prototypes) or "shown",
               **expl.summary(), "seconds": round(time.perf_counter() - t0, 2)}
    write_json(js, summary)
    return ExplainResult(png, js, summary)


def _short_name(path) -> str:
    name = Path(path).name
    return name if len(name) <= 40 else name[:39] + "…"


def sample_image(folder: str | Path | None = None) -> Path:
    """scikit-image's astronaut photograph (never seen in training) as a PNG in `folder` (default: a new
    temporary folder): a ready example for the explanation."""
    from PIL import Image
    from skimage import data

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="scaleprotoseg-explain-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def deeplab_checkpoint(train_dir: str | Path, project_dir: str | Path) -> Path | None:
    """The DeepLab model a pipeline run evaluates (for `--gradcam`), or None when it was not trained."""
    path = final_checkpoint(Path(train_dir), Path(project_dir))
    return path if path.is_file() else None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scaleprotoseg.explain", description=(
        "Explain the prediction of a prototype model on any image: the prediction, per predicted class its "
        "groups' / prototypes' activation maps, the winner per predicted pixel and the source patches of the "
        "prototypes that decided it; optionally a DeepLab's Grad-CAM beside them."))
    ap.add_argument("--checkpoint", required=True, help="a prototype model's model.pt (artifacts/project/<method>/seed-<n>/)")
    ap.add_argument("--image", required=True, help="a PNG or JPEG file, any size")
    ap.add_argument("--out", required=True, help="folder for <stem>_explained.png and .json")
    ap.add_argument("--gradcam", default=None, help="a DeepLab model.pt of the same dataset (artifacts/train/deeplab/seed-<n>/)")
    ap.add_argument("--size", type=int, default=512, help="longer side of the explained image, at most (default 512)")
    ap.add_argument("--classes", type=int, default=3, help="predicted classes explained, largest first (default 3)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        res = explain_file(args.image, args.checkpoint, args.out, args.gradcam, args.size, args.classes, args.device)
    except ScaleProtoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {res.png} and {res.json} ({', '.join(e['class'] for e in res.summary['explained'])}; "
          f"{res.summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
