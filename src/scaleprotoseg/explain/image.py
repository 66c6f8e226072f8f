"""Explain any image file with a saved prototype model (the command line: `python -m scaleprotoseg.explain`).

    python -m scaleprotoseg.explain --checkpoint artifacts/project/embedded/scaleprotoseg_groups/seed-0/model.pt \\
        --image photo.jpg --out reports/explain [--gradcam artifacts/train/embedded/deeplab/seed-0/model.pt] \\
        [--size 512] [--classes 3] [--device auto]

The image (PNG, JPEG, any size) is shrunk so that its longer side is at most `--size` pixels and normalised
with the checkpoint's own mean and std; the checkpoint carries its configuration and class names, so nothing
else is read. Writes `<image stem>_explained.png` (the figure of `figures.explanation_figure`) and
`<image stem>_explained.json` (what was explained, which groups/prototypes won how many pixels, which
prototypes decided) into `--out`, atomically. The source patches come from `patches.npz` beside the
checkpoint (written by the project stage) or inside the package; without it the figure says so. `--checkpoint`
may be a model package folder (`python -m scaleprotoseg.package`), read without unpickling anything.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import final_checkpoint, read_patches
from ..atomic import write_json
from ..config import PROTOTYPE_METHODS
from ..data.transforms import normalise
from ..device import resolve_device
from ..errors import ArtifactError, ConfigError, DataError
from ..models.build import load_model
from ..package import patches_dir
from ..plots import save_figure
from . import figures, maps
from .gradcam import WHERE_MODELS, load_gradcam_model, read_checkpoint


def read_image(path: str | Path, size: int = 512) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, shrunk (bilinear) so that its longer side is at most `size`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such image file; give --image the path of a PNG or JPEG image.")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # upright, as a viewer shows a camera photo
            w, h = im.size
            if max(h, w) > size:
                scale = size / max(h, w)
                im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} has more pixels than the decompression limit ({Image.MAX_IMAGE_PIXELS:,}), a guard "
                        "against decompression bombs; shrink the image first if it is genuine.") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); give --image a PNG or JPEG file.") from exc


def load_prototype_model(path: str | Path, device="cpu"):
    """(model, RunConfig, payload) of a prototype checkpoint or model package folder (payload: at least its
    `classes`); a DeepLab one is refused with the way to use it."""
    from ..package import is_package, read_config

    package = is_package(path)
    method = read_config(path)["method"] if package else (read_checkpoint(path, "--checkpoint").get("config") or {}).get("method")
    if method == "deeplab":
        raise ArtifactError(f"--checkpoint {path} is a DeepLab checkpoint: it has no prototypes to explain with. "
                            "Give --checkpoint a prototype model (protoseg, scaleprotoseg or scaleprotoseg_groups) "
                            "and pass this file as --gradcam to show its Grad-CAM maps beside it.")
    if method not in PROTOTYPE_METHODS:
        raise ArtifactError(f"--checkpoint {path} holds method {method!r}, not one of {list(PROTOTYPE_METHODS)}; "
                            f"{WHERE_MODELS}.")
    if package:
        from ..package import load_pretrained

        return load_pretrained(path, device)
    return load_model(path, device, "the project stage")


@dataclass
class ExplainResult:
    png: Path
    json: Path
    summary: dict


MAX_SIZE = 2048


def writable_folder(folder: str | Path, option: str) -> Path:
    """Check, before any long work and without creating anything, that `folder` (or the nearest folder above it
    that exists, where it would be created) is a folder a file can be written to."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{option} {folder}: {probe} is a file, not a folder; give a folder for the outputs.")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {folder} cannot be written to ({exc.strerror or exc}); give a writable folder.") from None
    return folder


def explain_file(image: str | Path, checkpoint: str | Path, out_dir: str | Path, gradcam: str | Path | None = None,
                 size: int = 512, classes: int = 3, device: str = "auto") -> ExplainResult:
    """Explain `image` with the prototype model of `checkpoint` (and, with `gradcam`, a DeepLab's Grad-CAM):
    writes the figure and the JSON summary into `out_dir` and returns their paths and the summary."""
    if size < 16:
        raise ConfigError(f"--size {size} is too small; give at least 16 (pixels of the longer side).")
    if size > MAX_SIZE:
        raise ConfigError(f"--size {size} is too large: the maps are computed for every pixel; give at most {MAX_SIZE} "
                          "(the largest evaluation size of the paper's datasets, Cityscapes' 2048).")
    if classes < 1:
        raise ConfigError(f"--classes {classes}: explain at least 1 class.")
    writable_folder(out_dir, "--out")
    t0 = time.perf_counter()
    dev = resolve_device(device, key="--device")
    model, cfg, payload = load_prototype_model(checkpoint, dev)
    names = list(payload["classes"])
    cam_model = load_gradcam_model(gradcam, dev, names) if gradcam is not None else None
    rgb = read_image(image, size)
    x = normalise(rgb, cfg.data.mean, cfg.data.std)[None].to(dev)
    expl = maps.explain_input(model, rgb, x, names, max_classes=classes, gradcam_model=cam_model)
    patches = read_patches(patches_dir(checkpoint))
    fig = figures.explanation_figure(expl, patches, title=f"{cfg.method}: why each class is predicted "
                                                                  f"({_short_name(image)})")
    stem = Path(image).stem
    out_dir = Path(out_dir)
    png, js = out_dir / f"{stem}_explained.png", out_dir / f"{stem}_explained.json"
    save_figure(fig, png)
    summary = {"image": str(image), "checkpoint": str(checkpoint), "method": cfg.method, "dataset": cfg.dataset,
               "gradcam": str(gradcam) if gradcam is not None else None,
               "source_patches": figures.patches_note(patches, expl.n_prototypes) or "shown",
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
