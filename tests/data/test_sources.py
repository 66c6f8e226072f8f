"""Raw dataset layouts → prepared format, on small fixtures written in each dataset's real on-disk layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scaleprotoseg.data import sources as src
from scaleprotoseg.data.convert import prepare_source
from scaleprotoseg.data.prepared import PreparedDataset, read_meta
from scaleprotoseg.errors import DataError

from ..layouts import PPP_SPEC


def _rgb(path, h=8, w=10, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _gray(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def _palette(path, arr):
    """A VOC-style palette PNG: stored values are palette indices, colours differ from the indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[1] = (128, 0, 0)  # aeroplane's VOC colour: its red channel is 128, not 1
    pal[15] = (192, 128, 128)
    pal[255] = (224, 224, 192)
    img.putpalette(pal.ravel().tolist())
    img.save(path)


def pascal_fixture(root, palette=True):
    lab = np.zeros((8, 10), np.uint8)
    lab[2:5, 2:6] = 1
    lab[6:, :3] = 15
    lab[1, :] = 255
    for i, sid in enumerate(["2007_000001", "2007_000002", "2007_000003"]):
        _rgb(root / "JPEGImages" / f"{sid}.jpg", seed=i)
        (_palette if palette else _gray)(root / ("SegmentationClass" if palette else "SegmentationClassAug") / f"{sid}.png", lab)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n")
    (lists / "val.txt").write_text("2007_000003\n")
    return lab


def test_pascal_palette_labels_are_read_as_indices_and_255_is_void(tmp_path):
    lab = pascal_fixture(tmp_path / "voc")
    source = src.scan_pascal(tmp_path / "voc")
    meta, skipped, _, _ = prepare_source(source, tmp_path / "out", progress=False)
    assert skipped == [] and meta.splits["train"] == ("2007_000001", "2007_000002") and meta.splits["val"] == ("2007_000003",)
    got = PreparedDataset(tmp_path / "out", "train").label(0)
    assert np.array_equal(got, lab)  # 1 = aeroplane (not 128), 15 = person, 255 void
    assert read_meta(tmp_path / "out").classes[15] == "person"


def test_pascal_grayscale_aug_labels_and_train_aug_lists(tmp_path):
    root = tmp_path / "voc"
    lab = pascal_fixture(root, palette=False)
    aug = root / "ImageSets" / "SegmentationAug"
    aug.mkdir(parents=True)
    (aug / "train_aug.txt").write_text("/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
                                       "/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n")
    source = src.scan_pascal(root)
    assert source.projection_split == "project" and source.splits["project"] == ["2007_000001", "2007_000002"]
    meta, *_ = prepare_source(source, tmp_path / "out", progress=False)
    assert np.array_equal(PreparedDataset(tmp_path / "out", "val").label(0), lab)


def test_missing_and_corrupt_files_are_reported_by_name(tmp_path):
    root = tmp_path / "voc"
    pascal_fixture(root)
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DataError, match="2007_000002.jpg"):
        prepare_source(src.scan_pascal(root), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written
    _rgb(root / "JPEGImages" / "2007_000002.jpg")
    (root / "SegmentationClass" / "2007_000003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)2007_000003.png.*skip_corrupt"):
        prepare_source(src.scan_pascal(root), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    meta, skipped, _, _ = prepare_source(src.scan_pascal(root), tmp_path / "out", skip_corrupt=True, progress=False)
    assert skipped == ["2007_000003"] and meta.splits["val"] == ()


def test_cityscapes_labelids_map_to_train_ids(tmp_path):
    root = tmp_path / "cs"
    lab = np.full((8, 10), 7, np.uint8)  # road
    lab[0] = 0  # unlabeled → void
    lab[1] = 26  # car → 13
    lab[2] = 9  # parking → void
    lab[3] = 33  # bicycle → 18
    for split in ("train", "val"):
        _rgb(root / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png")
        _gray(root / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png", lab)
    source = src.scan_cityscapes(root)
    prepare_source(source, tmp_path / "out", progress=False)
    got = PreparedDataset(tmp_path / "out", "train").label(0)
    assert got[5, 0] == 0 and got[0, 0] == 255 and got[1, 0] == 13 and got[2, 0] == 255 and got[3, 0] == 18
    assert source.classes[0] == "road" and len(source.classes) == 19


def test_ade20k_zero_is_void_and_classes_shift_by_one(tmp_path):
    base = tmp_path / "ade" / "ADEChallengeData2016"
    lab = np.zeros((8, 10), np.uint8)
    lab[4:] = 1
    lab[:, 8:] = 150
    for split in ("training", "validation"):
        _rgb(base / "images" / split / f"ADE_{split}_00000001.jpg")
        _gray(base / "annotations" / split / f"ADE_{split}_00000001.png", lab)
    prepare_source(src.scan_ade20k(tmp_path / "ade"), tmp_path / "out", progress=False)
    got = PreparedDataset(tmp_path / "out", "val").label(0)
    assert got[0, 0] == 255 and got[5, 0] == 0 and got[0, 9] == 149


def test_folder_dataset_with_declared_values_void_and_seeded_split(tmp_path):
    root = tmp_path / "mine"
    lab = np.zeros((8, 10), np.uint8)
    lab[3:] = 10
    lab[0] = 99  # declared void
    for i in range(5):
        _rgb(root / "images" / f"s{i}.jpg", seed=i)
        _gray(root / "masks" / f"s{i}.png", lab)
    (root / "classes.json").write_text(json.dumps({"names": ["ground", "crop"], "values": [0, 10], "void": 99}))
    a = src.scan_folder(root, seed=1)
    b = src.scan_folder(root, seed=1)
    assert a.splits == b.splits and len(a.splits["val"]) == 1 and len(a.splits["train"]) == 4
    prepare_source(a, tmp_path / "out", progress=False)
    got = PreparedDataset(tmp_path / "out", "train").label(0)
    assert got[0, 0] == 255 and got[2, 0] == 0 and got[5, 0] == 1
    # an image without a mask is named
    _rgb(root / "images" / "orphan.png")
    with pytest.raises(DataError, match="orphan"):
        src.scan_folder(root)


def test_layout_errors_say_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="JPEGImages"):
        src.scan_pascal(tmp_path)
    with pytest.raises(DataError, match="leftImg8bit"):
        src.scan_cityscapes(tmp_path)
    with pytest.raises(DataError, match="images/"):
        src.scan_folder(tmp_path)


@pytest.mark.slow  # trains
def test_folder_dataset_runs_through_the_stages_with_two_overrides(tmp_path, params):
    from scaleprotoseg.config import load_config, set_key
    from scaleprotoseg.stages.evaluate import evaluate_stage
    from scaleprotoseg.stages.prepare import prepare_dataset
    from scaleprotoseg.stages.project import project
    from scaleprotoseg.stages.train import train

    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(8):
        img = rng.integers(60, 120, (48, 48, 3), dtype=np.uint8)
        lab = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(4, 24, 2)
        img[y : y + 16, x : x + 16] = (220, 40, 40)
        lab[y : y + 16, x : x + 16] = 1
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        _gray(root / "masks" / f"f{i}.png", lab)
    (root / "classes.json").write_text(json.dumps({"names": ["ground", "box"]}))
    # the two overrides a user gives `dvc exp run -S`, plus tiny sizes for the test
    set_key(params, "experiment.dataset", "folder")
    set_key(params, "data_sources.folder.root", str(root))
    tiny = {"presets.folder.data.crop": 32, "presets.folder.model.width": 4, "experiment.device": "cpu",
            "presets.folder.project_scaleprotoseg.finetune_steps": 1,
            **{f"presets.folder.runtime.{k}": v for k, v in {
                "log_every": 1, "checkpoint_every": 1, "val_every": 0, "val_images": 2}.items()},
            **{f"presets.folder.scaleprotoseg.{k}": v for k, v in {
                "features": 4, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2}.items()}}
    for k, v in tiny.items():
        set_key(params, k, v)
    prepared = tmp_path / "artifacts" / "prepared" / "folder"
    meta = prepare_dataset(params, "folder", prepared)
    assert meta.classes == ("ground", "box") and len(meta.splits["train"]) + len(meta.splits["val"]) == 8
    cfg = load_config(params, method="scaleprotoseg")
    assert cfg.dataset == "folder"
    train(cfg, prepared, tmp_path / "t", tmp_path / "r", progress=False)
    project(cfg, prepared, tmp_path / "t", tmp_path / "p", progress=False)
    out = evaluate_stage(cfg, prepared, tmp_path / "t", tmp_path / "p", tmp_path / "e", progress=False)
    assert set(out["metrics"]["iou"]) == {"ground", "box"}
    # a root that does not exist names the key
    set_key(params, "data_sources.folder.root", str(tmp_path / "nowhere"))
    from scaleprotoseg.errors import ConfigError

    with pytest.raises(ConfigError, match="data_sources.folder.root"):
        prepare_dataset(params, "folder", tmp_path / "x")


def test_decode_uids_follows_the_documented_format():
    sid, iid, pid = src.decode_uids(np.array([1, 12, 1234, 12345, 123456, 1234567, 2400302]))
    assert sid.tolist() == [1, 12, 1, 12, 1, 12, 24]
    assert iid.tolist() == [-1, -1, 234, 345, 234, 345, 3]
    assert pid.tolist() == [-1, -1, -1, -1, 56, 67, 2]


def test_cityscapes_panoptic_parts_are_decoded_into_part_masks(tmp_path):
    root = tmp_path / "cs"
    lab = np.full((6, 8), 7, np.uint8)
    lab[2:, 2:5] = 24  # a person
    uids = np.full((6, 8), 7, np.int32)
    uids[2:4, 2:5] = 2400102  # person, instance 1, part 2 (head)
    uids[4:, 2:5] = 2400101  # torso
    uids[5, 4] = 24001  # person pixel without a part
    for split in ("train", "val"):
        _rgb(root / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png", h=6, w=8)
        _gray(root / "gtFine" / split / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", lab)
        pp = root / "gtFinePanopticParts" / split / "ulm" / "ulm_000000_000019_gtFinePanopticParts.tif"
        pp.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(uids, mode="I").save(pp)
    prepare_source(src.scan_cityscapes(root), tmp_path / "out", progress=False)
    ds = PreparedDataset(tmp_path / "out", "val")
    parts = ds.parts(0)
    assert parts[2, 2] == 2 and parts[4, 2] == 1 and parts[5, 4] == 0 and parts[0, 0] == 0
    assert ds.label(0)[2, 2] == 11  # person's train id
    assert ds.meta.parts["person"][1] == "head"


def test_coco_stuff_values_are_classes_and_255_is_void(tmp_path):
    root = tmp_path / "coco"
    lab = np.zeros((8, 10), np.uint8)
    lab[:, 5:] = 181
    lab[0] = 255
    for split in ("train2017", "val2017"):
        _rgb(root / "images" / split / "000000000139.jpg")
        _gray(root / "stuffthingmaps_trainval2017" / split / "000000000139.png", lab)
    source = src.scan_coco_stuff(root)
    assert len(source.classes) == 182
    prepare_source(source, tmp_path / "out", progress=False)
    got = PreparedDataset(tmp_path / "out", "train").label(0)
    assert got[0, 0] == 255 and got[3, 0] == 0 and got[3, 9] == 181


def test_em_tiff_stacks_give_a_seeded_20_10_split(tmp_path):
    root = tmp_path / "em"
    root.mkdir()
    rng = np.random.default_rng(0)
    vol = [Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)) for _ in range(30)]
    labs = [Image.fromarray(np.where(rng.random((16, 16)) > 0.5, 255, 0).astype(np.uint8)) for _ in range(30)]
    vol[0].save(root / "train-volume.tif", save_all=True, append_images=vol[1:])
    labs[0].save(root / "train-labels.tif", save_all=True, append_images=labs[1:])
    a, b = src.scan_em(root, seed=42), src.scan_em(root, seed=42)
    assert a.splits == b.splits and len(a.splits["train"]) == 20 and len(a.splits["val"]) == 10
    assert src.scan_em(root, seed=7).splits != a.splits
    prepare_source(a, tmp_path / "out", progress=False)
    ds = PreparedDataset(tmp_path / "out", "val")
    k = int(ds.ids[0].split("_")[1])
    assert np.array_equal(ds.label(0), (np.asarray(labs[k]) == 255).astype(np.uint8))
    assert np.array_equal(ds.image(0)[..., 0], np.asarray(vol[k]))


def _tiny_model(params, dataset, K):
    from scaleprotoseg.config import load_config
    from scaleprotoseg.models.build import build_for

    cfg = load_config(params, dataset=dataset, method="deeplab",
                      overrides={f"presets.{dataset}.model.backbone": "small", f"presets.{dataset}.model.width": 4,
                                 f"presets.{dataset}.model.pretrained": False, f"presets.{dataset}.model.msc_scales": [],
                                 f"presets.{dataset}.data.eval_size": None})
    return build_for(cfg, K, offline=True).eval(), cfg


def test_voc_test_export_writes_palette_pngs_in_the_server_layout(tmp_path, params):
    from scaleprotoseg.export import export_test_predictions

    root = tmp_path / "voc"
    pascal_fixture(root)
    _rgb(root / "JPEGImages" / "2008_000009.jpg", h=20, w=24)
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000009\n")
    source = src.scan_pascal(root)
    assert source.splits["test"] == ["2008_000009"]
    prepare_source(source, tmp_path / "prep", progress=False)
    model, cfg = _tiny_model(params, "pascal", 21)
    info = export_test_predictions(model, tmp_path / "prep", cfg.data, "pascal", tmp_path / "out", "cpu", progress=False)
    path = tmp_path / "out" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / "2008_000009.png"
    assert info["exported"] == 1 and path.is_file()
    with Image.open(path) as img:
        assert img.mode == "P" and img.size == (24, 20)
        assert img.getpalette()[3:6] == [128, 0, 0]
        assert np.asarray(img).max() <= 20


def test_cityscapes_test_export_writes_label_ids(tmp_path, params):
    from scaleprotoseg.export import export_test_predictions

    root = tmp_path / "cs"
    for split in ("train", "val"):
        _rgb(root / "leftImg8bit" / split / "ulm" / "ulm_000000_000019_leftImg8bit.png")
        _gray(root / "gtFine" / split / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", np.full((8, 10), 7))
    _rgb(root / "leftImg8bit" / "test" / "berlin" / "berlin_000001_000019_leftImg8bit.png", h=16, w=32)
    prepare_source(src.scan_cityscapes(root), tmp_path / "prep", progress=False)
    model, cfg = _tiny_model(params, "cityscapes", 19)
    info = export_test_predictions(model, tmp_path / "prep", cfg.data, "cityscapes", tmp_path / "out", "cpu", progress=False)
    path = tmp_path / "out" / "berlin" / "berlin_000001_000019_pred_labelIds.png"
    assert info["exported"] == 1 and path.is_file()
    ids = set(np.unique(np.asarray(Image.open(path))).tolist())
    assert ids <= set(src.CITYSCAPES_LABELID_TO_TRAINID)  # labelIds, never train ids
    # a dataset without a server gets a note, not an error
    info = export_test_predictions(model, tmp_path / "prep", cfg.data, "ade20k", tmp_path / "none", "cpu", progress=False)
    assert info["exported"] == 0 and (tmp_path / "none" / "README.txt").is_file()



def test_pascal_panoptic_parts_are_folded_per_class_with_the_spec(tmp_path):
    root = tmp_path / "voc"
    pascal_fixture(root)  # 1 = aeroplane at [2:5, 2:6], 15 = person at [6:, :3]
    uids = np.zeros((8, 10), np.int32)
    uids[2:5, 2:6] = 100101  # aeroplane, instance 1, body (raw 1 → 1)
    uids[2, 2] = 100103  # an engine (raw 3 → folded to 'engine' = 2)
    uids[3, 3] = 100107  # a wheel (raw 7 → 'wheel' = 3)
    uids[4, 5] = 100100  # aeroplane, void part (pid 0) → no part (an undeclared pid is an error: see below)
    uids[6:, :3] = 1500102  # person head (raw 2 → 2: no grouping, position 2)
    uids[7, 0] = 15001  # person pixel without part
    uids[0, 9] = 2100100  # a context class (sid 21) with the void part → no VOC part
    tif = root / "labels" / "validation" / "2007_000003.tif"
    tif.parent.mkdir(parents=True)
    Image.fromarray(uids, mode="I").save(tif)
    with pytest.raises(DataError, match="parts.yaml"):
        src.scan_pascal(root)
    (root / "parts.yaml").write_text(PPP_SPEC)
    source = src.scan_pascal(root)
    assert source.parts["aeroplane"] == ("body", "engine", "wheel") and "bicycle" not in source.parts
    prepare_source(source, tmp_path / "out", progress=False)
    val = PreparedDataset(tmp_path / "out", "val")
    p = val.parts(0)
    expect = np.zeros((8, 10), np.uint8)
    expect[2:5, 2:6] = 1
    expect[2, 2], expect[3, 3], expect[4, 5] = 2, 3, 0
    expect[6:, :3] = 2
    expect[7, 0] = 0
    assert np.array_equal(p, expect)
    # images without a part file have no visible part
    assert not PreparedDataset(tmp_path / "out", "train").parts(0).any()
    # the spec's table: car wheels 20..23 fold into 'wheel' (2); sid 7 is car. A part's own position is a file
    # pid of that part too (panoptic_parts' DatasetSpec maps positions first, then the groupings over them):
    # raw 2 on a car is its wheel, not an unknown id. Pids the spec does not declare are -1 (an error).
    parts, table = src.pascal_part_table(__import__("yaml").safe_load(PPP_SPEC), root / "parts.yaml")
    assert table[7, 20:24].tolist() == [2, 2, 2, 2] and table[7, 1] == 1 and table[7, 3] == 3 and table[7, 2] == 2
    assert table[7, 4] == -1 and table[7, 99] == -1 and table[21, 1] == -1 and table[21, 0] == 0
    bad = PPP_SPEC.replace("aeroplane: [body", "plane: [body")
    with pytest.raises(DataError, match="VOC order"):
        src.pascal_part_table(__import__("yaml").safe_load(bad), root / "parts.yaml")


def test_preparation_is_incremental_and_keeps_jpegs_as_they_are(tmp_path):
    import os

    root = tmp_path / "voc"
    pascal_fixture(root)
    out = tmp_path / "out"
    first = prepare_source(src.scan_pascal(root), out, progress=False)
    assert (first.converted, first.reused) == (3, 0)
    # JPEG sources are stored byte for byte, and read back as the same pixels
    jpg = root / "JPEGImages" / "2007_000001.jpg"
    assert (out / "images" / "2007_000001.jpg").read_bytes() == jpg.read_bytes()
    assert np.array_equal(PreparedDataset(out, "train").image(0), src.read_image(jpg))
    again = prepare_source(src.scan_pascal(root), out, progress=False)
    assert (again.converted, again.reused) == (0, 3)
    # one changed label is re-converted, and only that one; the output follows the new file
    lab = np.zeros((8, 10), np.uint8)
    lab[:, :5] = 7
    _palette(root / "SegmentationClass" / "2007_000002.png", lab)
    st = (root / "SegmentationClass" / "2007_000002.png").stat()
    os.utime(root / "SegmentationClass" / "2007_000002.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = prepare_source(src.scan_pascal(root), out, progress=False)
    assert (third.converted, third.reused) == (1, 2)
    assert np.array_equal(PreparedDataset(out, "train").label(1), lab)
    # a prepared folder whose files were deleted by hand is rebuilt rather than trusted
    (out / "labels" / "2007_000003.png").unlink()
    fourth = prepare_source(src.scan_pascal(root), out, progress=False)
    assert (fourth.converted, fourth.reused) == (1, 2)
    assert PreparedDataset(out, "val").label(0).shape == (8, 10)
    # a file every sample's conversion depends on (the parts spec appears) re-converts everything
    tif = root / "labels" / "validation" / "2007_000003.tif"
    tif.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 10), 100101, np.int32), mode="I").save(tif)
    (root / "parts.yaml").write_text(PPP_SPEC)
    fifth = prepare_source(src.scan_pascal(root), out, progress=False)
    assert (fifth.converted, fifth.reused) == (3, 0) and PreparedDataset(out, "val").parts(0).max() == 1


def test_rgb_png_sources_are_kept_byte_for_byte_and_others_are_encoded(tmp_path):
    root = tmp_path / "cs"
    _rgb(root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png")
    _gray(root / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", np.full((8, 10), 7))
    _rgb(root / "leftImg8bit" / "val" / "ulm" / "ulm_000001_000019_leftImg8bit.png", seed=1)
    _gray(root / "gtFine" / "val" / "ulm" / "ulm_000001_000019_gtFine_labelIds.png", np.full((8, 10), 7))
    prepare_source(src.scan_cityscapes(root), tmp_path / "out", progress=False)
    raw = root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png"
    assert (tmp_path / "out" / "images" / "train_ulm_000000_000019.png").read_bytes() == raw.read_bytes()
    # a grayscale folder image is decoded to RGB and written as a new PNG
    root = tmp_path / "mine"
    _gray(root / "images" / "a.png", np.arange(80).reshape(8, 10))
    _gray(root / "masks" / "a.png", np.zeros((8, 10)))
    _gray(root / "images" / "b.png", np.arange(80).reshape(8, 10))
    _gray(root / "masks" / "b.png", np.zeros((8, 10)))
    (root / "classes.json").write_text(json.dumps({"names": ["x"]}))
    prepare_source(src.scan_folder(root), tmp_path / "out2", progress=False)
    ds = PreparedDataset(tmp_path / "out2", "train")
    img = ds.image(0)
    assert img.shape == (8, 10, 3) and np.array_equal(img[..., 0], np.arange(80).reshape(8, 10))


# --- every dataset under its own names ------------------------------------------------------------------


COCO_NAMES = ["person", "bicycle"] + [f"thing_{k}" for k in range(3, 182)] + ["wood"]  # labels.txt ids 1..182


def _coco_labels(root, lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("\n".join(lines) + "\n")


def test_coco_stuff_png_value_v_is_named_by_labels_txt_id_v_plus_one(tmp_path):
    from ..layouts import write_coco_stuff

    root = write_coco_stuff(tmp_path / "coco", n=3)
    _coco_labels(root, ["0: unlabeled"] + [f"{k}: {n}" for k, n in enumerate(COCO_NAMES, start=1)])
    source = src.scan_coco_stuff(root)
    assert len(source.classes) == 182 and source.notes == ()
    assert source.classes[0] == "person" and source.classes[1] == "bicycle" and source.classes[181] == "wood"


def test_coco_stuff_labels_txt_in_another_format_is_refused_with_the_line(tmp_path):
    from ..layouts import write_coco_stuff

    root = write_coco_stuff(tmp_path / "coco", n=3)
    # without labels.txt: placeholder names, and a note that says so
    source = src.scan_coco_stuff(root)
    assert source.classes[0] == "class_000" and len(source.classes) == 182
    assert len(source.notes) == 1 and "labels.txt is missing" in source.notes[0]
    # a line that is not '<id>: <name>'
    _coco_labels(root, ["0: unlabeled", "person"] + [f"{k}: {n}" for k, n in enumerate(COCO_NAMES, start=1)])
    with pytest.raises(DataError, match=r"labels\.txt, line 2: 'person'.*'0: unlabeled' then '1: person'"):
        src.scan_coco_stuff(root)
    # a 0-based list (0: person … 181: wood) lacks id 182: it would shift every name
    _coco_labels(root, [f"{k}: {n}" for k, n in enumerate(COCO_NAMES)])
    with pytest.raises(DataError, match=r"labels\.txt: ids \[182\] are missing"):
        src.scan_coco_stuff(root)


def _object_info_txt(names):
    """objectInfo150.txt as ADEChallengeData2016 ships it: a header, tabs, a few stray spaces."""
    rows = ["Idx\tRatio\tTrain\tVal\tName"]
    for k, name in enumerate(names, start=1):
        idx = f"{k} " if k == 22 else str(k)  # the real file has '22 \t0.0074…'
        rows.append(f"{idx}\t0.0010\t100\t10\t{name}")
    return "\n".join(rows) + "\n"


ADE_NAMES = ["wall", "building, edifice", "sky", "floor, flooring", "tree", "ceiling", "road, route", "bed "] + [
    f"thing{k}, synonym" for k in range(9, 151)]


def test_ade20k_names_come_from_object_info_txt_or_csv(tmp_path):
    from ..layouts import write_ade20k

    root = write_ade20k(tmp_path / "ade", n=3)
    base = root / "ADEChallengeData2016"
    (base / "objectInfo150.txt").write_text(_object_info_txt(ADE_NAMES))
    source = src.scan_ade20k(root)
    assert source.notes == () and len(source.classes) == 150
    assert source.classes[:3] == ("wall", "building", "sky") and source.classes[7] == "bed"
    assert source.classes[21] == "thing22" and source.classes[149] == "thing150"
    # a mirror's csv in the folder above: quoted names, synonyms separated by ';' (and commas inside quotes)
    (base / "objectInfo150.txt").unlink()
    rows = ["Idx,Ratio,Train,Val,Name", '1,0.1576,11664,1172,"wall"', '2,0.1072,6046,612,"building;edifice"',
            '3,0.0878,8265,796,"person, individual;someone"'] + [f'{k},0.001,10,1,"c{k};x"' for k in range(4, 151)]
    (root / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    source = src.scan_ade20k(root)
    assert source.notes == () and source.classes[:3] == ("wall", "building", "person") and source.classes[149] == "c150"


def test_ade20k_without_names_says_so(tmp_path, params, capsys):
    from scaleprotoseg.config import set_key
    from scaleprotoseg.stages.prepare import prepare_dataset

    from ..layouts import write_ade20k

    root = write_ade20k(tmp_path / "ade", n=3)
    source = src.scan_ade20k(root)
    assert source.classes[0] == "class_001" and source.classes[149] == "class_150"
    assert len(source.notes) == 1 and "objectInfo150.txt (or .csv) is missing from" in source.notes[0]
    assert "class_001…class_150" in source.notes[0]
    # a file with 149 entries is not silently accepted (nor silently replaced)
    (root / "ADEChallengeData2016" / "objectInfo150.txt").write_text(_object_info_txt(ADE_NAMES[:149]))
    source = src.scan_ade20k(root)
    assert source.classes[0] == "class_001" and "1..150" in source.notes[0] and "objectInfo150.txt" in source.notes[0]
    # the preparation stage (what notebooks/10_prepare_data.ipynb runs) shows the note
    set_key(params, "data_sources.ade20k.root", str(root))
    meta = prepare_dataset(params, "ade20k", tmp_path / "prepared")
    assert meta.classes[0] == "class_001" and "note: ADE20K class names not read" in capsys.readouterr().out


def _uid_tif(path, uids):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(uids, np.int32), mode="I").save(path)
    return path


def test_uids_that_fit_no_format_are_reported_with_their_file(tmp_path):
    ok = np.array([0, 7, 99, 1000, 24001, 99_999, 100_000, 2_400_102, 9_999_999])
    sid, iid, pid = src.decode_uids(ok)
    assert sid.tolist() == [0, 7, 99, 1, 24, 99, 1, 24, 99] and pid.tolist()[-2:] == [2, 99]
    for bad in (100, 999, -1, 10_000_000):  # 3 digits (sid 0 with an instance), negative, 8 digits
        with pytest.raises(DataError, match=rf"uids: values \[{bad}\] fit no panoptic-parts uid format"):
            src.decode_uids(np.array([7, bad]))
    tif = _uid_tif(tmp_path / "x_gtFinePanopticParts.tif", [[7, 123], [26, 2_600_101]])
    with pytest.raises(DataError, match=r"x_gtFinePanopticParts\.tif: values \[123\].*4–5 digits"):
        src.read_uids(tif)
    # through the preparation stage: the file is named
    from ..layouts import write_cityscapes

    root = write_cityscapes(tmp_path / "cs", n=4)
    bad = next((root / "gtFinePanopticParts" / "val").glob("*/*.tif"))
    uids = np.asarray(Image.open(bad)).copy()
    uids[0, 0] = 555
    _uid_tif(bad, uids)
    with pytest.raises(DataError, match=rf"{bad.name}: values \[555\]"):
        prepare_source(src.scan_cityscapes(root), tmp_path / "out", progress=False)


def test_part_ids_not_declared_for_their_class_are_reported_with_their_file(tmp_path):
    # Cityscapes: person/rider pids 1..4 (5 is a known artefact → void part), car/truck/bus 1..5, nothing else
    tif = _uid_tif(tmp_path / "a.tif", [[2_400_104, 2_400_105, 2_600_105, 24_001], [7, 2_500_100, 0, 26]])
    assert src.read_panoptic_parts(tif).tolist() == [[4, 0, 5, 0], [0, 0, 0, 0]]
    for uid, what in ((2_600_106, r"sid 26 \(car\) pid 6, declared pids 1–5"),
                      (700_101, r"sid 7 \(road\) pid 1, declared pids none")):
        tif = _uid_tif(tmp_path / f"{uid}.tif", [[7, uid]])
        with pytest.raises(DataError, match=rf"{uid}\.tif: 1 \(semantic id, part id\) pair\(s\) not declared.*{what}"):
            src.read_panoptic_parts(tif)
    # Pascal: the part ids parts.yaml declares for the class (positions, countable groupings), nothing else
    root = tmp_path / "voc"
    pascal_fixture(root)
    (root / "parts.yaml").write_text(PPP_SPEC)
    tif = _uid_tif(root / "labels" / "validation" / "2007_000003.tif", np.full((8, 10), 100_101))
    for uid, what in ((100_199, r"sid 1 \(aeroplane\) pid 99, declared pids 1–8"),
                      (700_104, r"sid 7 \(car\) pid 4, declared pids 1–3, 20–23"),
                      (2_100_101, r"sid 21 \(wall\) pid 1, declared pids none"),
                      (2_500_101, r"sid 25 pid 1, declared pids none")):
        uids = np.full((8, 10), 100_101)
        uids[0, 0] = uid
        _uid_tif(tif, uids)
        with pytest.raises(DataError, match=rf"(?s)2007_000003\.tif: 1 \(semantic id, part id\).*parts\.yaml: {what}"):
            prepare_source(src.scan_pascal(root), tmp_path / "out", progress=False)


def _folder_with_parts(root, parts_json=None):
    """The layouts' folder dataset (ground 10, box 20, stripe 30, void 99) with box parts top (1) / bottom (2)
    for every image but the last."""
    from ..layouts import write_folder

    write_folder(root, n=5)
    spec = json.loads((root / "classes.json").read_text())
    spec["parts"] = parts_json if parts_json is not None else {"box": ["top", "bottom"]}
    (root / "classes.json").write_text(json.dumps(spec))
    expect = {}
    for i in range(4):
        lab = np.asarray(Image.open(root / "masks" / f"f{i}.png"))
        part = np.zeros_like(lab)
        ys, _ = np.nonzero(lab == 20)
        mid = (ys.min() + ys.max() + 1) // 2
        part[(lab == 20) & (np.arange(lab.shape[0])[:, None] < mid)] = 1
        part[(lab == 20) & (np.arange(lab.shape[0])[:, None] >= mid)] = 2
        expect[f"f{i}"] = part.copy()
        part[0, :3] = 2  # on void pixels (row 0 is void): ignored
        _gray(root / "parts" / f"f{i}.png", part)
    expect["f4"] = np.zeros_like(lab)
    return expect


def test_folder_dataset_with_part_masks_is_prepared_with_its_parts(tmp_path):
    expect = _folder_with_parts(tmp_path / "mine")
    source = src.scan_folder(tmp_path / "mine")
    assert source.parts == {"box": ("top", "bottom")} and source.files["f0"][2].name == "f0.png"
    assert source.files["f4"][2] is None
    meta, *_ = prepare_source(source, tmp_path / "out", progress=False)
    assert meta.parts == {"box": ("top", "bottom")} and read_meta(tmp_path / "out").has_parts
    for split in ("train", "val"):
        ds = PreparedDataset(tmp_path / "out", split)
        for i, sid in enumerate(ds.ids):
            assert np.array_equal(ds.parts(i), expect[sid]), sid


def test_folder_parts_that_do_not_fit_the_classes_file_are_refused(tmp_path):
    _folder_with_parts(tmp_path / "a", {"car": ["wheel"]})
    with pytest.raises(DataError, match=r"classes\.json: `parts` key 'car' is not one of the class `names`"):
        src.scan_folder(tmp_path / "a")
    _folder_with_parts(tmp_path / "b", {"box": []})
    with pytest.raises(DataError, match=r"classes\.json: `parts\.box` must be a list of 1\.\.254 distinct"):
        src.scan_folder(tmp_path / "b")
    # a value above the class's number of parts, or a part on a class without parts: the file is named
    root = tmp_path / "c"
    _folder_with_parts(root, {"box": ["whole"]})
    with pytest.raises(DataError, match=r"(?s)parts/f\d\.png: part values larger.*box: value 2 \(its parts: 1\.\.1\)"):
        prepare_source(src.scan_folder(root), tmp_path / "out", progress=False)
    root = tmp_path / "d"
    _folder_with_parts(root)
    part = np.asarray(Image.open(root / "parts" / "f1.png")).copy()
    lab = np.asarray(Image.open(root / "masks" / "f1.png"))
    part[lab == 30] = 1
    _gray(root / "parts" / "f1.png", part)
    with pytest.raises(DataError, match=r"parts/f1\.png: .*stripe: value 1 \(it has no parts\)"):
        prepare_source(src.scan_folder(root), tmp_path / "out", progress=False)
    # a part mask without an image; part masks without a `parts` entry
    _gray(root / "parts" / "ghost.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"part masks have no image in images/: \['ghost'\]"):
        src.scan_folder(root)
    (root / "parts" / "ghost.png").unlink()
    (root / "classes.json").write_text(json.dumps({"names": ["ground", "box", "stripe"], "values": [10, 20, 30]}))
    with pytest.raises(DataError, match=r"part masks found but .*classes\.json has no `parts` entry"):
        src.scan_folder(root)


def test_report_says_why_consistency_and_stability_are_empty(tmp_path):
    from scaleprotoseg.atomic import write_json
    from scaleprotoseg.stages.layout import layout
    from scaleprotoseg.stages.report import collect_results, write_report

    note = src.no_parts_note("folder")
    assert "folder has no part annotations" in note and "parts/<stem>.png" in note and "classes.json" in note
    for m in ("deeplab", "scaleprotoseg"):
        write_json(tmp_path / layout("evaluate_reports", "folder", m, 1) / "summary.json",
                   {"miou": 50.0, "pixel_accuracy": 80.0, "iou": {"ground": 60.0, "box": 40.0}})
    write_json(tmp_path / layout("interpret_reports", "folder", "scaleprotoseg", 1) / "summary.json",
               {"consistency": None, "note": note})
    results = collect_results(["deeplab", "scaleprotoseg"], [1], tmp_path, dataset="folder")
    write_report(results, "folder", tmp_path / "report")
    text = (tmp_path / "report" / "results.md").read_text()
    table_end = text.rindex("|")
    assert f"- {note}" in text[table_end:]
