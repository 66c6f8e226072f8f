"""Raw dataset layouts → prepared format, on small fixtures written in each dataset's real on-disk layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scaleprotoseg.data import sources as src
from scaleprotoseg.data.prepared import PreparedDataset, read_meta
from scaleprotoseg.errors import DataError

from .layouts import PPP_SPEC


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
    meta, skipped, _, _ = src.prepare_source(source, tmp_path / "out", progress=False)
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
    meta, *_ = src.prepare_source(source, tmp_path / "out", progress=False)
    assert np.array_equal(PreparedDataset(tmp_path / "out", "val").label(0), lab)


def test_missing_and_corrupt_files_are_reported_by_name(tmp_path):
    root = tmp_path / "voc"
    pascal_fixture(root)
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    with pytest.raises(DataError, match="2007_000002.jpg"):
        src.prepare_source(src.scan_pascal(root), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written
    _rgb(root / "JPEGImages" / "2007_000002.jpg")
    (root / "SegmentationClass" / "2007_000003.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)2007_000003.png.*skip_corrupt"):
        src.prepare_source(src.scan_pascal(root), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    meta, skipped, _, _ = src.prepare_source(src.scan_pascal(root), tmp_path / "out", skip_corrupt=True, progress=False)
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
    src.prepare_source(source, tmp_path / "out", progress=False)
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
    src.prepare_source(src.scan_ade20k(tmp_path / "ade"), tmp_path / "out", progress=False)
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
    src.prepare_source(a, tmp_path / "out", progress=False)
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


def test_folder_dataset_runs_through_the_stages_with_two_overrides(tmp_path, params):
    from scaleprotoseg import pipeline
    from scaleprotoseg.config import load_config, set_key

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
            **{f"presets.folder.scaleprotoseg.{k}": v for k, v in {
                "features": 4, "batch_size": 2, "warmup_steps": 1, "joint_steps": 2, "finetune_steps": 1,
                "log_every": 1, "checkpoint_every": 1, "val_every": 0, "val_images": 2}.items()}}
    for k, v in tiny.items():
        set_key(params, k, v)
    prepared = tmp_path / "artifacts" / "prepared" / "folder"
    meta = pipeline.prepare_dataset(params, "folder", prepared)
    assert meta.classes == ("ground", "box") and len(meta.splits["train"]) + len(meta.splits["val"]) == 8
    cfg = load_config(params, method="scaleprotoseg")
    assert cfg.dataset == "folder"
    pipeline.train(cfg, prepared, tmp_path / "t", tmp_path / "r", progress=False)
    pipeline.project(cfg, prepared, tmp_path / "t", tmp_path / "p", progress=False)
    out = pipeline.evaluate_stage(cfg, prepared, tmp_path / "t", tmp_path / "p", tmp_path / "e", progress=False)
    assert set(out["metrics"]["iou"]) == {"ground", "box"}
    # a root that does not exist names the key
    set_key(params, "data_sources.folder.root", str(tmp_path / "nowhere"))
    from scaleprotoseg.errors import ConfigError

    with pytest.raises(ConfigError, match="data_sources.folder.root"):
        pipeline.prepare_dataset(params, "folder", tmp_path / "x")


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
    src.prepare_source(src.scan_cityscapes(root), tmp_path / "out", progress=False)
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
    src.prepare_source(source, tmp_path / "out", progress=False)
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
    src.prepare_source(a, tmp_path / "out", progress=False)
    ds = PreparedDataset(tmp_path / "out", "val")
    k = int(ds.ids[0].split("_")[1])
    assert np.array_equal(ds.label(0), (np.asarray(labs[k]) == 255).astype(np.uint8))
    assert np.array_equal(ds.image(0)[..., 0], np.asarray(vol[k]))


def _tiny_model(params, dataset, K):
    from scaleprotoseg import pipeline
    from scaleprotoseg.config import load_config

    cfg = load_config(params, dataset=dataset, method="deeplab",
                      overrides={f"presets.{dataset}.model.backbone": "small", f"presets.{dataset}.model.width": 4,
                                 f"presets.{dataset}.model.pretrained": False, f"presets.{dataset}.model.msc_scales": [],
                                 f"presets.{dataset}.data.eval_size": None})
    return pipeline.build_for(cfg, K, offline=True).eval(), cfg


def test_voc_test_export_writes_palette_pngs_in_the_server_layout(tmp_path, params):
    from scaleprotoseg.export import export_test_predictions

    root = tmp_path / "voc"
    pascal_fixture(root)
    _rgb(root / "JPEGImages" / "2008_000009.jpg", h=20, w=24)
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("2008_000009\n")
    source = src.scan_pascal(root)
    assert source.splits["test"] == ["2008_000009"]
    src.prepare_source(source, tmp_path / "prep", progress=False)
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
    src.prepare_source(src.scan_cityscapes(root), tmp_path / "prep", progress=False)
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
    uids[4, 5] = 100199  # a raw id the spec does not know → no part
    uids[6:, :3] = 1500102  # person head (raw 2 → 2: no grouping, position 2)
    uids[7, 0] = 15001  # person pixel without part
    uids[0, 9] = 2100101  # a context class (sid 21) with a part id → not a VOC part
    tif = root / "labels" / "validation" / "2007_000003.tif"
    tif.parent.mkdir(parents=True)
    Image.fromarray(uids, mode="I").save(tif)
    with pytest.raises(DataError, match="parts.yaml"):
        src.scan_pascal(root)
    (root / "parts.yaml").write_text(PPP_SPEC)
    source = src.scan_pascal(root)
    assert source.parts["aeroplane"] == ("body", "engine", "wheel") and "bicycle" not in source.parts
    src.prepare_source(source, tmp_path / "out", progress=False)
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
    # the spec's table: car wheels 20..23 fold into 'wheel' (2); sid 7 is car
    parts, table = src.pascal_part_table(__import__("yaml").safe_load(PPP_SPEC), root / "parts.yaml")
    assert table[7, 20:24].tolist() == [2, 2, 2, 2] and table[7, 1] == 1 and table[7, 3] == 3 and table[7, 2] == 0
    bad = PPP_SPEC.replace("aeroplane: [body", "plane: [body")
    with pytest.raises(DataError, match="VOC order"):
        src.pascal_part_table(__import__("yaml").safe_load(bad), root / "parts.yaml")


def test_preparation_is_incremental_and_keeps_jpegs_as_they_are(tmp_path):
    import os

    root = tmp_path / "voc"
    pascal_fixture(root)
    out = tmp_path / "out"
    first = src.prepare_source(src.scan_pascal(root), out, progress=False)
    assert (first.converted, first.reused) == (3, 0)
    # JPEG sources are stored byte for byte, and read back as the same pixels
    jpg = root / "JPEGImages" / "2007_000001.jpg"
    assert (out / "images" / "2007_000001.jpg").read_bytes() == jpg.read_bytes()
    assert np.array_equal(PreparedDataset(out, "train").image(0), src.read_image(jpg))
    again = src.prepare_source(src.scan_pascal(root), out, progress=False)
    assert (again.converted, again.reused) == (0, 3)
    # one changed label is re-converted, and only that one; the output follows the new file
    lab = np.zeros((8, 10), np.uint8)
    lab[:, :5] = 7
    _palette(root / "SegmentationClass" / "2007_000002.png", lab)
    st = (root / "SegmentationClass" / "2007_000002.png").stat()
    os.utime(root / "SegmentationClass" / "2007_000002.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = src.prepare_source(src.scan_pascal(root), out, progress=False)
    assert (third.converted, third.reused) == (1, 2)
    assert np.array_equal(PreparedDataset(out, "train").label(1), lab)
    # a prepared folder whose files were deleted by hand is rebuilt rather than trusted
    (out / "labels" / "2007_000003.png").unlink()
    fourth = src.prepare_source(src.scan_pascal(root), out, progress=False)
    assert (fourth.converted, fourth.reused) == (1, 2)
    assert PreparedDataset(out, "val").label(0).shape == (8, 10)
    # a file every sample's conversion depends on (the parts spec appears) re-converts everything
    tif = root / "labels" / "validation" / "2007_000003.tif"
    tif.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 10), 100101, np.int32), mode="I").save(tif)
    (root / "parts.yaml").write_text(PPP_SPEC)
    fifth = src.prepare_source(src.scan_pascal(root), out, progress=False)
    assert (fifth.converted, fifth.reused) == (3, 0) and PreparedDataset(out, "val").parts(0).max() == 1


def test_rgb_png_sources_are_kept_byte_for_byte_and_others_are_encoded(tmp_path):
    root = tmp_path / "cs"
    _rgb(root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png")
    _gray(root / "gtFine" / "train" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png", np.full((8, 10), 7))
    _rgb(root / "leftImg8bit" / "val" / "ulm" / "ulm_000001_000019_leftImg8bit.png", seed=1)
    _gray(root / "gtFine" / "val" / "ulm" / "ulm_000001_000019_gtFine_labelIds.png", np.full((8, 10), 7))
    src.prepare_source(src.scan_cityscapes(root), tmp_path / "out", progress=False)
    raw = root / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png"
    assert (tmp_path / "out" / "images" / "train_ulm_000000_000019.png").read_bytes() == raw.read_bytes()
    # a grayscale folder image is decoded to RGB and written as a new PNG
    root = tmp_path / "mine"
    _gray(root / "images" / "a.png", np.arange(80).reshape(8, 10))
    _gray(root / "masks" / "a.png", np.zeros((8, 10)))
    _gray(root / "images" / "b.png", np.arange(80).reshape(8, 10))
    _gray(root / "masks" / "b.png", np.zeros((8, 10)))
    (root / "classes.json").write_text(json.dumps({"names": ["x"]}))
    src.prepare_source(src.scan_folder(root), tmp_path / "out2", progress=False)
    ds = PreparedDataset(tmp_path / "out2", "train")
    img = ds.image(0)
    assert img.shape == (8, 10, 3) and np.array_equal(img[..., 0], np.arange(80).reshape(8, 10))
