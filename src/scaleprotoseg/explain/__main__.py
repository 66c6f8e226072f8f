"""`python -m scaleprotoseg.explain`: explain any image file with a saved prototype model (see `image`).

    python -m scaleprotoseg.explain --checkpoint artifacts/project/embedded/scaleprotoseg_groups/seed-0/model.pt \\
        --image photo.jpg --out reports/explain [--gradcam artifacts/train/embedded/deeplab/seed-0/model.pt] \\
        [--size 512] [--classes 3] [--device auto]
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ScaleProtoSegError
from .image import explain_file


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scaleprotoseg.explain", description=(
        "Explain the prediction of a prototype model on any image: the prediction, per predicted class its "
        "groups' / prototypes' activation maps, the winner per predicted pixel and the source patches of the "
        "prototypes that decided it; optionally a DeepLab's Grad-CAM beside them."))
    ap.add_argument("--checkpoint", required=True, help="a prototype model's model.pt (artifacts/project/<dataset>/<method>/seed-<n>/) or model package folder (artifacts/package/<dataset>/<method>/seed-<n>/)")
    ap.add_argument("--image", required=True, help="a PNG or JPEG file, any size")
    ap.add_argument("--out", required=True, help="folder for <stem>_explained.png and .json")
    ap.add_argument("--gradcam", default=None, help="a DeepLab model.pt of the same dataset (artifacts/train/<dataset>/deeplab/seed-<n>/)")
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
