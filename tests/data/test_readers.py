"""Readers on hand-made excerpts in the official formats (tests/data/fixtures), images made at run time."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from unip2.data.coco import CocoInstances, load_coco_captions
from unip2.data.imagenet import find_imagenet, list_split, load_synset_mapping
from unip2.data.images import check_image, decode_rgb, read_bytes
from unip2.data.karpathy import load_karpathy

FIXTURES = Path(__file__).parent / "fixtures"


def _decode(counts: str, height: int, width: int) -> np.ndarray:
    return mask_utils.decode({"size": [height, width], "counts": counts.encode()}).astype(bool)


def test_coco_instances_polygons_crowd_rle_and_empty_images():
    reader = CocoInstances(FIXTURES / "instances_val2017.json")
    assert reader.categories == [(1, "person"), (3, "car"), (18, "dog")]
    assert [(i.image_id, i.file_name, i.width, i.height) for i in reader.images] == [
        (139, "000000000139.jpg", 64, 48), (285, "000000000285.jpg", 40, 50), (632, "000000000632.jpg", 30, 30)]
    assert reader.dropped == {"annotation_without_image": 1}

    objects, dropped = reader.instances(reader.images[0])
    assert [o.category_id for o in objects] == [18, 1] and not dropped
    dog = _decode(objects[0].mask_counts, 48, 64)
    # Two polygons merged into one mask: a rectangle and a triangle, inside the annotated box.
    ys, xs = np.nonzero(dog)
    x, y, w, h = objects[0].box
    assert xs.min() >= int(x) and xs.max() <= x + w and ys.min() >= int(y) and ys.max() <= y + h
    assert dog[15, 20] and dog[32, 45] and not dog[15, 35]
    assert objects[0].box == (10.5, 5.0, 39.5, 35.0) and objects[0].area == 487.5

    objects, dropped = reader.instances(reader.images[1])
    assert dropped == {"annotation_invalid_segmentation": 1, "annotation_invalid_box": 1}
    crowd, car = objects
    assert (crowd.iscrowd, car.iscrowd) == (1, 0)
    crowd_mask = _decode(crowd.mask_counts, 50, 40)
    assert crowd_mask.sum() == 60 and crowd_mask[:20, 2:5].all() and not crowd_mask[20:].any()
    assert mask_utils.toBbox({"size": [50, 40], "counts": crowd.mask_counts.encode()}).tolist() == [2, 0, 3, 20]

    objects, dropped = reader.instances(reader.images[2])
    assert objects == [] and not dropped


def test_coco_captions_keep_raw_sentences_and_count_drops():
    captions = load_coco_captions(FIXTURES / "captions_val2017.json")
    assert [c.image.image_id for c in captions.images] == [139, 285]
    assert len(captions.images[0].captions) == 5 and len(captions.images[1].captions) == 5
    assert captions.images[0].captions[1] == "A room with chairs, a table, and a woman in it."
    assert captions.dropped == {"annotation_without_image": 1, "annotation_empty_caption": 1,
                                "image_without_captions": 1}


def test_karpathy_coco_and_flickr30k():
    coco = load_karpathy(FIXTURES / "dataset_coco.json")
    assert coco.dataset == "coco"
    first = coco.images[0]
    assert (first.split, first.filepath, first.filename, first.cocoid) == ("test", "val2014",
                                                                           "COCO_val2014_000000000139.jpg", 139)
    assert first.tokens[0][:3] == ["a", "woman", "stands"] and first.captions[0].endswith("table.")
    assert [e.split for e in coco.images] == ["test", "restval", "val", "train", "val"]
    assert coco.images[2].captions == []

    flickr = load_karpathy(FIXTURES / "dataset_flickr30k.json")
    assert flickr.dataset == "flickr30k"
    assert all(e.cocoid is None and e.filepath is None for e in flickr.images)
    assert [(e.index, e.split, e.filename) for e in flickr.images][:2] == [(0, "train", "1000092795.jpg"),
                                                                          (1, "test", "10002456.jpg")]


def test_karpathy_refuses_unknown_split(tmp_path):
    bad = tmp_path / "dataset_coco.json"
    bad.write_text('{"images": [{"split": "dev", "filename": "x.jpg", "sentences": []}]}')
    with pytest.raises(ValueError, match=str(bad)):
        load_karpathy(bad)


def _jpeg(path: Path, size=(20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 60)).save(path, format="JPEG")


def test_imagenet_class_folders_and_mapping(tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    shutil.copy(FIXTURES / "LOC_synset_mapping.txt", root / "LOC_synset_mapping.txt")
    for name in ("n01443537/n01443537_1.JPEG", "n01443537/n01443537_0.JPEG", "n01440764/n01440764_7.JPEG",
                 "n09999999/n09999999_1.JPEG"):
        _jpeg(root / "train" / name)
    (root / "train" / "n01440764" / "notes.txt").write_text("not an image")
    mapping = load_synset_mapping(root / "LOC_synset_mapping.txt")
    assert mapping == {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    layout = find_imagenet(root)
    assert set(layout.split_dirs) == {"train"}
    files, dropped = list_split(layout, "train", list(mapping))
    assert [(f.file_name, f.label) for f in files] == [("n01440764/n01440764_7.JPEG", 0),
                                                       ("n01443537/n01443537_0.JPEG", 1),
                                                       ("n01443537/n01443537_1.JPEG", 1)]
    assert dropped == {"unknown_wnid": 1}


def test_imagenet_kaggle_layout_with_flat_val(tmp_path):
    root = tmp_path / "kaggle"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    for name in ("ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000003.JPEG",
                 "ILSVRC2012_val_00000004.JPEG"):
        _jpeg(data / "val" / name)
    shutil.copy(FIXTURES / "LOC_synset_mapping.txt", root / "LOC_synset_mapping.txt")
    shutil.copy(FIXTURES / "LOC_val_solution.csv", root / "LOC_val_solution.csv")
    layout = find_imagenet(root)
    files, dropped = list_split(layout, "val", list(load_synset_mapping(layout.mapping_file)))
    assert [(f.file_name, f.wnid, f.label) for f in files] == [
        ("ILSVRC2012_val_00000003.JPEG", "n01440764", 0), ("ILSVRC2012_val_00000001.JPEG", "n01443537", 1),
        ("ILSVRC2012_val_00000002.JPEG", "n01484850", 2)]
    assert dropped == {"unlabelled": 1}


def test_imagenet_wrong_roots_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        find_imagenet(missing)
    with pytest.raises(ValueError, match=str(tmp_path)):
        find_imagenet(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="LOC_synset_mapping.txt"):
        find_imagenet(tmp_path)


def test_image_checks_name_the_failure(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    good = buffer.getvalue()
    assert check_image(good).ok and (check_image(good).width, check_image(good).height) == (32, 24)
    assert decode_rgb(good).shape == (24, 32, 3)
    assert check_image(good[: len(good) // 2]).reason == "truncated"
    assert check_image(good[:-2]).reason == "truncated"
    assert check_image(b"\x00garbage" * 50).reason == "undecodable"
    assert check_image(b"").reason == "empty_file"
    png = io.BytesIO()
    Image.new("L", (5, 7)).save(png, "PNG")
    assert decode_rgb(png.getvalue()).shape == (7, 5, 3)
    assert read_bytes(tmp_path / "absent.jpg") == (None, "missing_file")


def test_imagenet_names_that_repeat_are_made_unique(tmp_path):
    from unip2.data.imagenet import load_synset_mapping

    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n02012849 crane\nn03126707 crane\nn01440764 tench, Tinca tinca\n"
                       "n09999998 bank, shore\nn09999999 bank, shore\n")
    names = load_synset_mapping(mapping)
    assert names["n01440764"] == "tench"
    assert names["n02012849"] == "crane (n02012849)" and names["n03126707"] == "crane (n03126707)"
    assert names["n09999998"] == "bank, shore (n09999998)"
    assert len(set(names.values())) == len(names)
