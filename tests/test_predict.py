"""`python -m scaleprotoseg.predict`: a folder of photographs (scikit-image's) and one corrupt file segmented
with a model package and with its model.pt; masks, overlays, the CSV, and bad files reported by name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scaleprotoseg.errors import DataError
from scaleprotoseg.package import write_package
from scaleprotoseg.predict import main, predict_folder

from .trained import trained


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from scaleprotoseg.config import read_params
    from scaleprotoseg.paths import repo_root

    root = tmp_path_factory.mktemp("predict")
    m = trained(root, read_params(repo_root() / "params.yaml"))
    write_package(m["groups_project"] / "model.pt", root / "package", evaluate_dir=m["groups_evaluate"])
    return {**m, "package": root / "package"}


@pytest.fixture()
def photos(tmp_path):
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a PNG")
    return folder


@pytest.mark.slow  # trains its models (seconds)
def test_predict_a_folder_writes_masks_overlays_and_the_csv_and_reports_the_corrupt_file(models, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--model", str(models["package"]), "--images", str(photos), "--out", str(out), "--overlay",
                 "--batch-size", "2", "--device", "cpu"]) == 0
    console = capsys.readouterr()
    assert "broken.png" in console.err and "broken.png" in console.out  # reported when skipped and in the summary
    table = pd.read_csv(out / "predictions.csv", index_col=0)
    assert list(table.index) == [str(photos / n) for n in ("astronaut.png", "broken.png", "coffee.jpg")]
    assert table.loc[str(photos / "broken.png"), "status"].startswith("skipped: not a readable image")
    ok = table[table.status == "ok"]
    assert ok.height.tolist() == [512, 400] and ok.width.tolist() == [512, 600]
    text = (out / "predictions.csv").read_text()
    assert "astronaut.png,ok,512,512," in text and "broken.png,skipped: not a readable image" in text  # no 512.0
    assert len(ok) == 2
    config = json.loads((models["package"] / "config.json").read_text())
    classes, values = config["classes"], config["label_values"]
    area = ok[[f"{c} %" for c in classes]]
    assert np.allclose(area.sum(axis=1), 100, atol=1e-2)
    won = ok[[c for c in ok.columns if c.startswith("won % ")]]
    assert len(won.columns) == len(classes) * config["groups"]["per_class"]  # one column per group
    assert np.allclose(won.sum(axis=1), 100, atol=1e-2)  # every pixel is won by a group of its predicted class
    for name, size in (("astronaut", (512, 512)), ("coffee", (400, 600))):
        with Image.open(out / "masks" / f"{name}.png") as mask:
            assert mask.mode == "P" and mask.size[::-1] == size
            arr = np.asarray(mask)
            assert set(np.unique(arr)) <= set(values)
            pal = np.asarray(mask.getpalette()[:768]).reshape(256, 3)
            assert all((pal[v] == rgb).all() for v, rgb in zip(values, config["palette"]))
            # the CSV's areas are the mask's
            row = ok.loc[str(next(photos.glob(f"{name}.*")))]
            for c, v in zip(classes, values):
                assert row[f"{c} %"] == pytest.approx(100 * (arr == v).mean(), abs=1e-3)
        with Image.open(out / "overlays" / f"{name}.png") as ov:
            assert ov.mode == "RGB" and ov.size[::-1] == size
    assert not (out / "masks" / "broken.png").exists()


def test_strict_stops_before_writing_and_names_the_file(models, photos, tmp_path, capsys):
    out = tmp_path / "strict"
    with pytest.raises(DataError, match=r"broken\.png.*not a readable image"):
        predict_folder(models["package"], photos, out, strict=True, device="cpu", progress=False)
    assert not out.exists()
    assert main(["--model", str(models["package"]), "--images", str(photos), "--out", str(out), "--strict"]) == 1
    assert "broken.png" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow  # trains its models (seconds)
def test_the_package_and_its_model_pt_predict_the_same_masks(models, photos, tmp_path):
    (photos / "broken.png").unlink()
    a = predict_folder(models["package"], photos, tmp_path / "a", device="cpu", progress=False)
    b = predict_folder(models["groups_project"] / "model.pt", [photos / "coffee.jpg", photos / "astronaut.png"],
                       tmp_path / "b", batch_size=1, device="cpu", progress=False)
    assert a["written"] == b["written"] == 2 and not a["skipped"]
    for name in ("astronaut", "coffee"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "masks" / f"{name}.png")),
                              np.asarray(Image.open(tmp_path / "b" / "masks" / f"{name}.png")))


def test_no_files_and_missing_files_are_named(models, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files in"):
        predict_folder(models["package"], tmp_path / "empty", tmp_path / "o", device="cpu", progress=False)
    res = predict_folder(models["package"], [tmp_path / "nope.png"], tmp_path / "o", device="cpu", progress=False)
    assert res["skipped"] == [(str(tmp_path / "nope.png"), "skipped: no such file")] and res["written"] == 0
