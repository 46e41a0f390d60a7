"""The Parquet converter: round trip from the generator, bad input skipped and counted, safe output."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from unip2.data.manifest import load_manifest, read_rows, split_files
from unip2.data.parquet_schema import SCHEMAS
from unip2.data.prepare import prepare
from unip2.data.shapes import CATEGORIES
from unip2.data.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
TINY = SyntheticConfig(seed=5, train_images=24, val_images=10, cls_train_per_class=2, cls_val_per_class=1,
                       flickr_images=4, image_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepare") / "shapes"
    generate(out, TINY)
    return out


@pytest.fixture(scope="module")
def converted(world) -> Path:
    out = world.parent / "parquet"
    prepare(out=out, coco=world / "coco", imagenet=world / "imagenet", karpathy=world / "coco" / "dataset_coco.json",
            rows_per_shard=10, workers=2)
    return out


def _copy_world(world: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shapes"
    shutil.copytree(world, copy)
    return copy


def test_manifest_layout_and_shards(converted):
    manifest = load_manifest(converted)
    assert manifest["format_version"] == 1
    rows = {name: {s: e["rows"] for s, e in d["splits"].items()} for name, d in manifest["datasets"].items()}
    assert rows == {"coco_instances": {"train": 24, "val": 10}, "coco_captions": {"train": 24, "val": 5, "test": 5},
                    "imagenet": {"train": 24, "val": 12}}
    assert manifest["datasets"]["coco_instances"]["splits"]["train"]["files"] == [
        f"coco_instances/train/part-0000{i}.parquet" for i in range(3)]
    assert [pq.read_metadata(p).num_rows for p in split_files(converted, "coco_instances", "train")] == [10, 10, 4]
    names = [c.name for c in CATEGORIES]
    assert manifest["class_names"] == {"coco": names, "imagenet": names}
    assert manifest["coco_category_ids"] == [c.id for c in CATEGORIES]
    assert all(not reasons for splits in manifest["skipped"].values() for reasons in splits.values())
    assert Path(manifest["annotations"]["instances"]["val"]).name == "instances_val2017.json"
    assert Path(manifest["annotations"]["captions"]["train"]).is_absolute()
    for name, data in manifest["datasets"].items():
        for entry in data["splits"].values():
            for file in entry["files"]:
                assert pq.read_schema(converted / file).equals(SCHEMAS[name], check_metadata=False)


def test_instances_round_trip(world, converted):
    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(world / "coco" / "annotations" / f"instances_{split}2017.json"))
        label_of = {c.id: i for i, c in enumerate(CATEGORIES)}
        rows = read_rows(converted, "coco_instances", split)
        assert [r["image_id"] for r in rows] == sorted(gt.getImgIds())
        for row in rows:
            info = gt.imgs[row["image_id"]]
            assert row["image"] == (world / "coco" / f"{split}2017" / info["file_name"]).read_bytes()
            assert (row["file_name"], row["width"], row["height"]) == (info["file_name"], 64, 64)
            anns = gt.loadAnns(gt.getAnnIds(imgIds=[row["image_id"]]))
            assert row["boxes"] == [a["bbox"] for a in anns]
            assert row["category_ids"] == [a["category_id"] for a in anns]
            assert row["labels"] == [label_of[a["category_id"]] for a in anns]
            assert row["areas"] == [a["area"] for a in anns] and row["iscrowd"] == [0] * len(anns)
            for counts, ann in zip(row["masks"], anns, strict=True):
                mask = mask_utils.decode({"size": [64, 64], "counts": counts.encode()})
                np.testing.assert_array_equal(mask, gt.annToMask(ann))


def test_captions_round_trip_follow_karpathy_splits(world, converted):
    karpathy = json.loads((world / "coco" / "dataset_coco.json").read_text())["images"]
    expected = {"train": {}, "val": {}, "test": {}}
    for entry in karpathy:
        split = "train" if entry["split"] in ("train", "restval") else entry["split"]
        expected[split][entry["cocoid"]] = ([s["raw"] for s in entry["sentences"]], entry["filepath"], entry["filename"])
    for split, by_id in expected.items():
        rows = read_rows(converted, "coco_captions", split)
        assert {r["image_id"] for r in rows} == set(by_id)
        for row in rows:
            captions, folder, name = by_id[row["image_id"]]
            assert row["captions"] == captions and len(captions) == 5
            assert row["image"] == (world / "coco" / folder / name).read_bytes()


def test_imagenet_round_trip(world, converted):
    wnids = sorted(c.wnid for c in CATEGORIES)
    for split in ("train", "val"):
        rows = read_rows(converted, "imagenet", split)
        assert [r["image_id"] for r in rows] == list(range(len(rows)))
        for row in rows:
            assert wnids[row["label"]] == row["wnid"]
            assert row["image"] == (world / "imagenet" / split / row["file_name"]).read_bytes()


def test_imagenet_training_rows_are_written_in_a_fixed_shuffled_order(world, converted, tmp_path):
    """Not by class folder: the training stream only shuffles within windows of consecutive rows."""
    labels = [row["label"] for row in read_rows(converted, "imagenet", "train")]
    assert labels != sorted(labels) and sorted(labels) == sorted(c for c in range(len(CATEGORIES)) for _ in range(2))
    again = prepare(out=tmp_path / "again", imagenet=world / "imagenet", progress_interval_s=3600)
    assert again["datasets"]["imagenet"]["splits"]["train"]["rows"] == len(labels)
    assert [row["label"] for row in read_rows(tmp_path / "again", "imagenet", "train")] == labels


def test_generated_flickr30k_split_converts(world, tmp_path):
    flickr = world / "flickr30k"
    manifest = prepare(out=tmp_path / "out", flickr30k=(flickr / "dataset_flickr30k.json", flickr / "flickr30k-images"),
                       progress_interval_s=3600)
    assert {name: list(d["splits"]) for name, d in manifest["datasets"].items()} == {"flickr30k": ["test"]}
    assert manifest["skipped"]["flickr30k"] == {"test": {}}
    entries = json.loads((flickr / "dataset_flickr30k.json").read_text())["images"]
    rows = read_rows(tmp_path / "out", "flickr30k", "test")
    assert [r["image_id"] for r in rows] == [e["imgid"] for e in entries]
    for row, entry in zip(rows, entries):
        assert row["captions"] == [s["raw"] for s in entry["sentences"]] and len(row["captions"]) == 5
        assert row["image"] == (flickr / "flickr30k-images" / entry["filename"]).read_bytes()
        assert (row["file_name"], row["width"], row["height"]) == (entry["filename"], 64, 64)


def test_embedded_default_converts_the_flickr30k_split_and_completes_an_older_cache(tmp_path, monkeypatch):
    from unip2.data import embedded

    small = SyntheticConfig(seed=0, train_images=4, val_images=2, cls_train_per_class=1, cls_val_per_class=1,
                            flickr_images=3, image_size=64)
    monkeypatch.setattr(embedded, "SyntheticConfig", lambda seed: SyntheticConfig(**{**small.__dict__, "seed": seed}))
    root = embedded.ensure_embedded_data(tmp_path, seed=0)
    assert load_manifest(root)["datasets"]["flickr30k"]["splits"]["test"]["rows"] == 3
    coco_before = (root.parent / "raw" / "coco" / "dataset_coco.json").read_bytes()
    # A cache from before the Flickr30k split: regenerated and converted again, the other files unchanged.
    shutil.rmtree(root.parent / "raw" / "flickr30k")
    manifest = load_manifest(root)
    del manifest["datasets"]["flickr30k"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert embedded.ensure_embedded_data(tmp_path, seed=0) == root
    assert "flickr30k" in load_manifest(root)["datasets"]
    assert (root.parent / "raw" / "coco" / "dataset_coco.json").read_bytes() == coco_before


def test_captions_without_karpathy_use_the_2017_files(world, tmp_path):
    manifest = prepare(out=tmp_path / "out", coco=world / "coco", progress_interval_s=0.0)
    assert {s: e["rows"] for s, e in manifest["datasets"]["coco_captions"]["splits"].items()} == {"train": 24, "val": 10}
    assert "imagenet" not in manifest["datasets"]


def test_corrupt_and_missing_images_are_skipped_and_counted(world, tmp_path, capsys):
    root = _copy_world(world, tmp_path)
    train = root / "coco" / "train2017"
    (train / "000000000002.jpg").write_bytes((train / "000000000002.jpg").read_bytes()[:300])  # truncated
    (train / "000000000003.jpg").write_bytes(np.random.default_rng(0).bytes(2000))  # garbage
    (train / "000000000004.jpg").unlink()  # annotation pointing to a missing image
    Image.new("RGB", (32, 64)).save(train / "000000000005.jpg")  # decodes, but not the annotated size
    val_file = next((root / "imagenet" / "val").rglob("*.JPEG"))
    val_file.write_bytes(val_file.read_bytes()[:-100])
    manifest = prepare(out=tmp_path / "out", coco=root / "coco", imagenet=root / "imagenet",
                       karpathy=root / "coco" / "dataset_coco.json", progress_interval_s=0.0)

    skipped = manifest["skipped"]
    assert skipped["coco_instances"] == {"train": {"missing_file": 1, "size_mismatch": 1, "truncated": 1,
                                                   "undecodable": 1}, "val": {}}
    assert skipped["imagenet"] == {"train": {}, "val": {"truncated": 1}}
    karpathy = json.loads((root / "coco" / "dataset_coco.json").read_text())["images"]
    split_of = {e["cocoid"]: "train" if e["split"] in ("train", "restval") else e["split"] for e in karpathy}
    assert {split_of[i] for i in (2, 3, 4)} == {"train"}
    assert skipped["coco_captions"]["train"] == {"missing_file": 1, "truncated": 1, "undecodable": 1}
    rows = {n: {s: e["rows"] for s, e in d["splits"].items()} for n, d in manifest["datasets"].items()}
    assert rows["coco_instances"]["train"] == 20 and rows["coco_captions"]["train"] == 21
    assert rows["imagenet"]["val"] == 11
    assert 5 not in {r["image_id"] for r in read_rows(tmp_path / "out", "coco_instances", "train", ["image_id"])}
    assert "[prepare] coco_instances/train: 20/24" in capsys.readouterr().err


def test_wrong_roots_are_refused_with_the_path_and_nothing_is_written(world, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_coco")):
        prepare(out=out, coco=tmp_path / "no_coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path / "empty")):
        prepare(out=out, coco=tmp_path / "empty")
    with pytest.raises(ValueError, match=str(tmp_path / "empty")):
        prepare(out=out, imagenet=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        prepare(out=out, coco=world / "coco", karpathy=tmp_path / "missing.json")
    root = _copy_world(world, tmp_path)
    shutil.rmtree(root / "coco" / "val2017")
    with pytest.raises(FileNotFoundError, match=str(root / "coco" / "val2017")):
        prepare(out=out, coco=root / "coco")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "shapes"]
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match=str(tmp_path / "exists")):
        prepare(out=tmp_path / "exists", coco=world / "coco")


def test_failure_midway_leaves_no_output(world, tmp_path):
    bad = tmp_path / "dataset_flickr30k.json"
    bad.write_text('{"images": [')  # cut off: the run fails after COCO is converted
    images = tmp_path / "flickr30k-images"
    images.mkdir()
    with pytest.raises(ValueError, match=str(bad)):
        prepare(out=tmp_path / "out", coco=world / "coco", flickr30k=(bad, images))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset_flickr30k.json", "flickr30k-images"]


def _jpeg(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 90)).save(path, format="JPEG")


def test_real_format_fixtures_convert(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for name in ("instances_val2017.json", "captions_val2017.json"):
        shutil.copy(FIXTURES / name, coco / "annotations" / name)
    for image_id, size in ((139, (64, 48)), (285, (40, 50)), (632, (30, 30))):
        _jpeg(coco / "val2017" / f"{image_id:012d}.jpg", size)
    flickr_images = tmp_path / "flickr30k-images"
    for name in ("1000092795.jpg", "10002456.jpg", "1000344755.jpg"):  # 1000268201.jpg is missing
        _jpeg(flickr_images / name, (50, 40))
    out = tmp_path / "out"
    manifest = prepare(out=out, coco=coco, karpathy=FIXTURES / "dataset_coco.json",
                       flickr30k=(FIXTURES / "dataset_flickr30k.json", flickr_images))

    assert manifest["class_names"]["coco"] == ["person", "car", "dog"]
    assert manifest["coco_category_ids"] == [1, 3, 18]
    instances = read_rows(out, "coco_instances", "val")
    assert [(r["image_id"], r["labels"], r["iscrowd"]) for r in instances] == [
        (139, [2, 0], [0, 0]), (285, [0, 1], [1, 0]), (632, [], [])]
    assert instances[1]["boxes"] == [[2.0, 0.0, 3.0, 20.0], [20.0, 30.0, 15.0, 15.0]]
    assert manifest["skipped"]["coco_instances"]["val"] == {
        "annotation_invalid_box": 1, "annotation_invalid_segmentation": 1, "annotation_without_image": 1}

    # Karpathy entries name 2014 files; the images are found by cocoid in val2017.
    captions = {s: [(r["image_id"], r["file_name"], len(r["captions"])) for r in read_rows(out, "coco_captions", s)]
                for s in ("train", "val", "test")}
    assert captions == {"train": [(285, "000000000285.jpg", 1)], "val": [], "test": [(139, "000000000139.jpg", 2)]}
    assert manifest["skipped"]["coco_captions"] == {"train": {"missing_file": 1}, "test": {},
                                                    "val": {"image_without_captions": 1, "missing_file": 1}}
    assert read_rows(out, "coco_captions", "train")[0]["captions"] == [
        "A big burly grizzly bear is show with grass in the background."]

    flickr = read_rows(out, "flickr30k", "test")
    assert [(r["image_id"], r["file_name"], r["width"], r["height"]) for r in flickr] == [(1, "10002456.jpg", 50, 40)]
    assert manifest["skipped"]["flickr30k"] == {"test": {"missing_file": 1}}
    assert list(manifest["datasets"]["flickr30k"]["splits"]) == ["test"]
    assert pq.read_metadata(split_files(out, "coco_captions", "val")[0]).num_rows == 0


def test_command_line_script(world, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare_data.py"), "--coco",
                             str(world / "coco"), "--imagenet", str(world / "imagenet"), "--karpathy",
                             str(world / "coco" / "dataset_coco.json"), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert load_manifest(out)["datasets"]["coco_captions"]["splits"]["test"]["rows"] == 5
    failed = subprocess.run([sys.executable, str(REPO / "pipelines" / "prepare_data.py"), "--coco",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert failed.returncode != 0 and str(tmp_path / "nope") in failed.stderr
