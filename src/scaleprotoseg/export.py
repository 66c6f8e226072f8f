"""Test-set predictions in the evaluation servers' formats (Pascal VOC and Cityscapes).

- pascal: one palette PNG per test image (class indices 0..20 with the VOC palette) under
  `results/VOC2012/Segmentation/comp6_test_cls/<id>.png` — zip `results/` and submit.
- cityscapes: one grayscale PNG of **labelIds** (train ids mapped back) per test image, named
  `<city>/<city>_<seq>_<frame>_pred_labelIds.png` — zip the folder and submit.
Predictions follow the dataset's evaluation protocol (inference resolution from the preset, logits
upsampled bilinearly to the image size). The whole folder is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_dir
from .data.prepared import PreparedDataset, read_meta
from .data.sources import CITYSCAPES_TRAINID_TO_LABELID, voc_palette
from .data.transforms import eval_transform
from .evaluation import predict
from .progress import tqdm

SERVERS = ("pascal", "cityscapes")


def export_test_predictions(model, data_root: Path, data_cfg, dataset: str, out_dir: Path, device, progress: bool = True) -> dict:
    meta = read_meta(data_root)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if dataset not in SERVERS or "test" not in meta.splits or not meta.splits["test"]:
            why = (f"{dataset} has no evaluation server export" if dataset not in SERVERS
                   else "the prepared dataset has no test split (put the test images in the raw folder)")
            (tmp / "README.txt").write_text(f"No test-set export: {why}.\n")
            return {"exported": 0, "note": why}
        ds = PreparedDataset(data_root, "test")
        model.eval()
        palette = voc_palette()
        for i in tqdm(range(len(ds)), desc="export", disable=not progress, leave=False):
            image = ds.image(i)
            x = eval_transform(image, data_cfg.eval_size, data_cfg.eval_short_side, data_cfg.mean, data_cfg.std)[None].to(device)
            pred = predict(model, x, image.shape[:2])[0].cpu().numpy().astype(np.uint8)
            sid = ds.ids[i]
            if dataset == "pascal":
                path = tmp / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / f"{sid}.png"
                img = Image.fromarray(pred, mode="P")
                img.putpalette(palette.tolist())
            else:
                stem = sid.removeprefix("test_")
                path = tmp / stem.split("_")[0] / f"{stem}_pred_labelIds.png"
                img = Image.fromarray(CITYSCAPES_TRAINID_TO_LABELID[pred], mode="L")
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
    return {"exported": len(ds), "format": dataset, "folder": str(out_dir)}
