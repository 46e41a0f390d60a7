"""The shapes-world generator: deterministic, valid COCO / Karpathy / ImageNet files, consistent masks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unip2.data.caption_templates import caption_vocabulary
from unip2.data.karpathy import load_karpathy
from unip2.data.shapes import CATEGORIES
from unip2.data.synthetic import SyntheticConfig, generate, main

TINY = SyntheticConfig(seed=3, train_images=24, val_images=12, cls_train_per_class=3, cls_val_per_class=2,
                       flickr_images=6, image_size=96)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "shapes"
    generate(out, TINY)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _quiet_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_layout_uses_the_real_names(world):
    coco = world / "coco"
    for name in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                 "annotations/captions_train2017.json", "annotations/captions_val2017.json", "dataset_coco.json"):
        assert (coco / name).is_file(), name
    assert len(list((coco / "train2017").glob("*.jpg"))) == 24
    assert len(list((coco / "val2017").glob("*.jpg"))) == 12
    mapping = (world / "imagenet" / "LOC_synset_mapping.txt").read_text().splitlines()
    assert mapping == [f"{c.wnid} {c.name}" for c in sorted(CATEGORIES, key=lambda c: c.wnid)]
    for split, per_class in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (world / "imagenet" / split).iterdir())
        assert folders == sorted(c.wnid for c in CATEGORIES)
        assert all(len(list((world / "imagenet" / split / w).glob("*.JPEG"))) == per_class for w in folders)
    with Image.open(next((coco / "val2017").glob("*.jpg"))) as image:
        assert image.format == "JPEG" and image.size == (96, 96)
    assert (world / "flickr30k" / "dataset_flickr30k.json").is_file()
    assert len(list((world / "flickr30k" / "flickr30k-images").glob("*.jpg"))) == 6


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(world, tmp_path):
    again = tmp_path / "again"
    generate(again, TINY)
    first, second = _files(world), _files(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other = tmp_path / "other"
    generate(other, SyntheticConfig(**{**TINY.__dict__, "seed": 4}))
    different = _files(other)
    assert different["coco/annotations/instances_train2017.json"] != first["coco/annotations/instances_train2017.json"]
    assert different["coco/train2017/000000000001.jpg"] != first["coco/train2017/000000000001.jpg"]


@pytest.mark.parametrize("split", ["train2017", "val2017"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_results_scores_ap_one(world, split, iou_type):
    gt = _quiet_coco(world / "coco" / "annotations" / f"instances_{split}.json")
    results = []
    for ann in gt.dataset["annotations"]:
        result = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
        if iou_type == "bbox":
            result["bbox"] = ann["bbox"]
        else:
            rle = gt.annToRLE(ann)
            result["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()
                                      if isinstance(rle["counts"], bytes) else rle["counts"]}
        results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP @ IoU 0.50:0.95
    assert evaluator.stats[1] == pytest.approx(1.0)  # AP @ IoU 0.50


def test_masks_lie_in_their_tight_boxes_and_both_kinds_of_segmentation_appear(world):
    gt = _quiet_coco(world / "coco" / "annotations" / "instances_train2017.json")
    kinds = set()
    for ann in gt.dataset["annotations"]:
        kinds.add("polygon" if isinstance(ann["segmentation"], list) else "rle")
        mask = gt.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] > 0
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert w >= 5 and h >= 5  # objects stay big enough to detect, occluded or not
    assert kinds == {"polygon", "rle"}
    per_image = [len(gt.getAnnIds(imgIds=[i])) for i in gt.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) <= 4
    assert sorted(c["id"] for c in gt.dataset["categories"]) == [c.id for c in CATEGORIES]


def test_instances_do_not_overlap_in_their_visible_masks(world):
    gt = _quiet_coco(world / "coco" / "annotations" / "instances_val2017.json")
    for image_id in gt.getImgIds():
        masks = [gt.annToMask(a) for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))]
        assert (np.sum(masks, axis=0) <= 1).all()


def test_five_captions_per_image_from_the_closed_vocabulary(world):
    vocabulary = set(caption_vocabulary())
    for split in ("train2017", "val2017"):
        payload = json.loads((world / "coco" / "annotations" / f"captions_{split}.json").read_text())
        per_image: dict[int, list[str]] = {}
        for ann in payload["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann["caption"])
        assert sorted(per_image) == sorted(img["id"] for img in payload["images"])
        for captions in per_image.values():
            assert len(captions) == 5 and len(set(captions)) == 5
            for caption in captions:
                assert caption == caption.strip() and set(caption.split()) <= vocabulary


def test_captions_name_the_objects_in_the_image(world):
    gt = _quiet_coco(world / "coco" / "annotations" / "instances_val2017.json")
    names = {c["id"]: c["name"].split() for c in gt.dataset["categories"]}
    payload = json.loads((world / "coco" / "annotations" / "captions_val2017.json").read_text())
    for ann in payload["annotations"]:
        colours_shapes = {tuple(names[a["category_id"]]) for a in gt.loadAnns(gt.getAnnIds(imgIds=[ann["image_id"]]))}
        words = ann["caption"].split()
        mentioned = {(words[i], words[i + 1].rstrip("s")) for i in range(len(words) - 1)
                     if words[i] in ("red", "green", "blue")}
        assert mentioned and mentioned <= colours_shapes


def test_karpathy_file_splits_train2017_and_val2017(world):
    payload = json.loads((world / "coco" / "dataset_coco.json").read_text())
    assert payload["dataset"] == "coco"
    images = payload["images"]
    assert len(images) == 36 and [e["imgid"] for e in images] == list(range(36))
    val_ids = {img["id"] for img in json.loads((world / "coco/annotations/captions_val2017.json").read_text())["images"]}
    for entry in images:
        assert (world / "coco" / entry["filepath"] / entry["filename"]).is_file()
        assert len(entry["sentences"]) == 5 and entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        assert all(s["tokens"] == s["raw"].split() and s["imgid"] == entry["imgid"] for s in entry["sentences"])
        if entry["cocoid"] in val_ids:
            assert entry["split"] in ("val", "test") and entry["filepath"] == "val2017"
        else:
            assert entry["split"] in ("train", "restval") and entry["filepath"] == "train2017"
    splits = [e["split"] for e in images]
    assert splits.count("val") == 6 and splits.count("test") == 6


def test_flickr30k_file_is_karpathy_format_without_coco_fields(world):
    payload = json.loads((world / "flickr30k" / "dataset_flickr30k.json").read_text())
    assert payload["dataset"] == "flickr30k"
    images = payload["images"]
    assert [e["imgid"] for e in images] == list(range(6)) and {e["split"] for e in images} == {"test"}
    for entry in images:
        assert "filepath" not in entry and "cocoid" not in entry
        assert (world / "flickr30k" / "flickr30k-images" / entry["filename"]).is_file()
        assert entry["filename"][:-4].isdigit() and entry["filename"].endswith(".jpg")  # photo-id names
        assert len(entry["sentences"]) == 5 and entry["sentids"] == [s["sentid"] for s in entry["sentences"]]
        assert all(s["tokens"] == s["raw"].split() and s["imgid"] == entry["imgid"] for s in entry["sentences"])
    parsed = load_karpathy(world / "flickr30k" / "dataset_flickr30k.json")
    assert all(e.cocoid is None and e.filepath is None and len(e.captions) == 5 for e in parsed.images)
    # New scenes, not copies of the COCO-style images.
    coco_bytes = {p.read_bytes() for p in (world / "coco" / "val2017").glob("*.jpg")}
    assert not coco_bytes & {p.read_bytes() for p in (world / "flickr30k" / "flickr30k-images").glob("*.jpg")}


def test_the_flickr30k_split_leaves_the_other_datasets_unchanged(world, tmp_path):
    without = tmp_path / "without"
    generate(without, SyntheticConfig(**{**TINY.__dict__, "flickr_images": 0}))
    first, second = _files(world), _files(without)
    assert not (without / "flickr30k").exists()
    assert {k: v for k, v in first.items() if not k.startswith("flickr30k/")} == second


def test_existing_output_is_refused_and_bad_sizes_rejected(world):
    with pytest.raises(FileExistsError, match=str(world)):
        generate(world, TINY)
    with pytest.raises(ValueError, match="max_objects"):
        SyntheticConfig(max_objects=7)


def test_command_line(tmp_path):
    summary = main(["--out", str(tmp_path / "cli"), "--seed", "1", "--train-images", "4", "--val-images", "2",
                    "--cls-train-per-class", "1", "--cls-val-per-class", "1", "--flickr-images", "2",
                    "--image-size", "64"])
    assert summary["coco"]["train2017"]["images"] == 4 and summary["coco"]["val2017"]["captions"] == 10
    assert summary["imagenet_images"] == 2 * len(CATEGORIES) and summary["flickr30k_images"] == 2
    assert not any(p.name.startswith(".cli") for p in tmp_path.iterdir())
