"""Model packages: package → load → predict gives the stage's own logits bit for bit; loading unpickles
nothing (a poisoned pickle beside the files is never opened); a malformed config.json names the key and the
file; the package CLI, the card's numbers and the explain CLI on a package folder."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from scaleprotoseg.data.prepared import PreparedDataset
from scaleprotoseg.data.transforms import eval_transform
from scaleprotoseg.errors import ArtifactError
from scaleprotoseg.models.build import load_model
from scaleprotoseg.package import CONFIG, load_pretrained, main, read_config, write_package

from .trained import trained


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from scaleprotoseg.config import read_params
    from scaleprotoseg.paths import repo_root

    root = tmp_path_factory.mktemp("package")
    m = trained(root, read_params(repo_root() / "params.yaml"))
    write_package(m["groups_project"] / "model.pt", root / "groups_pkg", evaluate_dir=m["groups_evaluate"])
    write_package(m["project"] / "model.pt", root / "pkg")
    return {**m, "groups_pkg": root / "groups_pkg", "pkg": root / "pkg"}


@pytest.mark.slow  # trains its models (seconds)
@pytest.mark.parametrize("which", ["pkg", "groups_pkg"])
def test_package_round_trip_gives_the_stages_logits_bit_for_bit_on_the_validation_split(models, which):
    stage_model = {"pkg": models["project"], "groups_pkg": models["groups_project"]}[which] / "model.pt"
    ref, cfg, payload = load_model(stage_model)
    got, gcfg, config = load_pretrained(models[which])
    assert gcfg == cfg and config["classes"] == list(payload["classes"])
    assert set(got.state_dict()) == set(ref.state_dict())
    val = PreparedDataset(models["data"], "val")
    assert len(val) == 3
    with torch.no_grad():
        for i in range(len(val)):
            x = eval_transform(val.image(i), cfg.data.eval_size, cfg.data.eval_short_side, cfg.data.mean, cfg.data.std)[None]
            a, b = ref.predict_logits(x), got.predict_logits(x)
            assert a.shape[1] == 3 and torch.equal(a, b)


@pytest.mark.slow  # trains its models (seconds)
def test_package_holds_the_hub_layout_and_a_card_with_the_evaluations_numbers(models):
    folder = models["groups_pkg"]
    assert {"model.safetensors", "config.json", "README.md", "patches.npz"} <= {p.name for p in folder.iterdir()}
    config = read_config(folder)
    assert config["method"] == "scaleprotoseg_groups" and config["groups"]["per_class"] == 3
    assert config["prototypes"]["count"] == len(config["prototypes"]["class"])
    miou = json.loads((models["groups_evaluate"] / "summary.json").read_text())["miou"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n") and f"| miou | {miou:.2f} |" in card
    assert "load_pretrained" in card and "upload_folder" in card


def _poison(path, marker):
    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"state_dict": Boom()}))


def test_loading_a_package_never_unpickles(models, tmp_path):
    import shutil

    folder = tmp_path / "pkg"
    shutil.copytree(models["groups_pkg"], folder)
    marker = tmp_path / "unpickled"
    # the poison works: unpickling it creates the marker
    _poison(tmp_path / "probe.pkl", marker)
    pickle.loads((tmp_path / "probe.pkl").read_bytes())
    assert marker.is_file()
    marker.unlink()
    for name in ("model.pt", "pytorch_model.bin", "extra.pkl", "training_args.bin"):
        _poison(folder / name, marker)
    load_pretrained(folder)
    from scaleprotoseg.explain.image import explain_file, sample_image
    from scaleprotoseg.predict import predict_folder

    image = sample_image(tmp_path / "img")
    res = predict_folder(folder, image, tmp_path / "pred", device="cpu", progress=False)
    assert res["written"] == 1
    out = explain_file(image, folder, tmp_path / "explained", size=64, classes=1, device="cpu")
    assert out.png.is_file() and out.summary["method"] == "scaleprotoseg_groups"
    assert out.summary["source_patches"] == "shown"  # patches.npz inside the package
    assert not marker.exists()


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.pop("classes"), r"config.json: key 'classes' is missing"),
    (lambda c: c.update(method=3), r"config.json: key 'method' must be a JSON string, got int"),
    (lambda c: c.update(label_values=[0, 1]), r"config.json: key 'label_values' must hold 3 integers"),
    (lambda c: c.update(format="something-else"), r"config.json: format 'something-else' is not"),
    (lambda c: c["config"].pop("model"), r"config.json: its stored configuration does not fit .*model"),
])
def test_a_malformed_config_names_the_key_and_the_file(models, tmp_path, edit, message):
    import shutil

    folder = tmp_path / "pkg"
    shutil.copytree(models["pkg"], folder)
    config = json.loads((folder / CONFIG).read_text())
    edit(config)
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=message):
        load_pretrained(folder)


def test_a_config_that_is_not_json_or_weights_that_do_not_fit_are_named(models, tmp_path):
    import shutil

    folder = tmp_path / "pkg"
    shutil.copytree(models["pkg"], folder)
    (folder / CONFIG).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"pkg/config.json is not valid JSON"):
        load_pretrained(folder)
    shutil.copy(models["groups_pkg"] / CONFIG, folder / CONFIG)  # the groups' network, the plain model's weights
    with pytest.raises(ArtifactError, match=r"model.safetensors does not fit the network .*config.json describes"):
        load_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"model.safetensors is not a readable safetensors file"):
        load_pretrained(folder)
    with pytest.raises(ArtifactError, match="no such model package folder"):
        load_pretrained(tmp_path / "absent")


@pytest.mark.slow  # trains its models (seconds)
def test_package_cli(models, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--model", str(models["groups_project"] / "model.pt"), "--out", str(out),
                 "--evaluate", str(models["groups_evaluate"]), "--licence", "cc-by-4.0"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert (out / "README.md").read_text().startswith("---\nlicense: cc-by-4.0\n")
    assert main(["--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 1
    assert "missing.pt" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow  # trains its models (seconds)
def test_a_deeplab_package_round_trips_and_predicts_without_prototype_columns(tmp_path, tiny_dataset, tiny_cfg):
    import pandas as pd
    from PIL import Image

    from scaleprotoseg.predict import predict_folder
    from scaleprotoseg.stages.train import train

    train(tiny_cfg, tiny_dataset, tmp_path / "t", tmp_path / "r", progress=False)
    write_package(tmp_path / "t" / "model.pt", tmp_path / "pkg")
    ref, cfg, _ = load_model(tmp_path / "t" / "model.pt")
    got, _, config = load_pretrained(tmp_path / "pkg")
    assert config["prototypes"] is None and config["groups"] is None and "gallery.png" not in config
    val = PreparedDataset(tiny_dataset, "val")
    with torch.no_grad():
        for i in range(len(val)):
            x = eval_transform(val.image(i), cfg.data.eval_size, cfg.data.eval_short_side, cfg.data.mean, cfg.data.std)[None]
            assert torch.equal(ref.predict_logits(x), got.predict_logits(x))
    Image.fromarray(val.image(0)).save(tmp_path / "a.png")
    res = predict_folder(tmp_path / "pkg", [tmp_path / "a.png"], tmp_path / "out", device="cpu", progress=False)
    table = pd.read_csv(res["csv"], index_col=0)
    assert res["written"] == 1 and not any(c.startswith("won % ") for c in table.columns)
    assert list(table.columns[-3:]) == [f"{c} %" for c in config["classes"]]


@pytest.mark.slow  # trains its models (seconds)
def test_the_card_carries_the_interpret_stages_metrics_and_the_gallery_is_copied(models, tmp_path):
    from PIL import Image

    interpret = tmp_path / "interpret"
    (interpret / "details").mkdir(parents=True)
    (interpret / "summary.json").write_text(json.dumps({"method": "scaleprotoseg_groups", "consistency": 41.25,
                                                        "stability": 77.5, "seconds": 3.0}))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(interpret / "details" / "gallery.png")
    write_package(models["groups_project"] / "model.pt", tmp_path / "pkg", models["groups_evaluate"], interpret)
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert "| consistency | 41.25 |" in card and "| stability | 77.50 |" in card and "seconds" not in card
    assert "![prototype gallery](gallery.png)" in card
    assert (tmp_path / "pkg" / "gallery.png").read_bytes() == (interpret / "details" / "gallery.png").read_bytes()
