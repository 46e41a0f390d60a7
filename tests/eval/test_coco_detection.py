import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unip2.eval import METRIC_NAMES, coco_eval, to_coco_results, write_coco_results

CATEGORY_IDS = [3, 7, 11]  # non-contiguous, as in COCO
IMAGES = {10: (128, 128), 20: (96, 120), 30: (64, 64)}  # id: (height, width)


def rectangle_mask(height, width, x, y, w, h):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    return mask


def json_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def ground_truth_objects():
    """(image_id, category_id, x, y, w, h, as_polygon): small, medium and large objects."""
    return [
        (10, 3, 10, 10, 100, 100, True),   # large
        (10, 7, 5, 110, 20, 12, False),    # small, RLE
        (20, 7, 30, 20, 50, 40, True),     # medium
        (20, 11, 0, 0, 16, 16, False),     # small, RLE
        (30, 3, 20, 20, 40, 36, True),     # medium
        (30, 11, 2, 2, 10, 8, True),       # small
    ]


@pytest.fixture()
def annotation_file(tmp_path):
    annotations = []
    for index, (image_id, category_id, x, y, w, h, as_polygon) in enumerate(ground_truth_objects()):
        height, width = IMAGES[image_id]
        if as_polygon:
            segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        else:
            segmentation = json_rle(rectangle_mask(height, width, x, y, w, h))
        annotations.append({"id": index + 1, "image_id": image_id, "category_id": category_id,
                            "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                            "segmentation": segmentation})
    payload = {
        "images": [{"id": i, "height": h, "width": w, "file_name": f"{i}.jpg"} for i, (h, w) in IMAGES.items()],
        "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS],
        "annotations": annotations,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(payload))
    return path


def perturbed_predictions(seed=0):
    """The project's per-image prediction dicts: shifted objects, one missed, false positives."""
    rng = np.random.default_rng(seed)
    per_image = {i: {"image_id": i, "boxes": [], "labels": [], "scores": [], "masks": []} for i in IMAGES}
    for image_id, category_id, x, y, w, h, _ in ground_truth_objects()[:-1]:  # the last one is missed
        height, width = IMAGES[image_id]
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        x, y = max(0, x + dx), max(0, y + dy)
        entry = per_image[image_id]
        entry["boxes"].append([x, y, w, h])
        entry["labels"].append(CATEGORY_IDS.index(category_id))
        entry["scores"].append(float(rng.uniform(0.3, 1.0)))
        entry["masks"].append(json_rle(rectangle_mask(height, width, x, y, w - 2, h)))
    for image_id, (height, width) in IMAGES.items():  # a false positive per image
        x, y, w, h = 1, height // 2, width // 3, height // 4
        entry = per_image[image_id]
        entry["boxes"].append([x, y, w, h])
        entry["labels"].append(int(rng.integers(0, len(CATEGORY_IDS))))
        entry["scores"].append(float(rng.uniform(0.3, 1.0)))
        entry["masks"].append(json_rle(rectangle_mask(height, width, x, y, w, h)))
    return list(per_image.values())


def direct_cocoeval(annotation_file, entries, iou_type, image_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(entries), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(METRIC_NAMES, (float(v) for v in evaluator.stats[:6])))


def test_to_coco_results_maps_labels_to_category_ids():
    results = to_coco_results(perturbed_predictions(), CATEGORY_IDS)
    assert len(results) == 5 + 3
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    first = results[0]
    assert first["image_id"] == 10 and first["category_id"] == 3 and len(first["bbox"]) == 4
    assert isinstance(first["segmentation"]["counts"], str)
    json.dumps(results)  # JSON-ready


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_cocoeval_called_directly(annotation_file, tmp_path, iou_type):
    results_file = write_coco_results(to_coco_results(perturbed_predictions(), CATEGORY_IDS),
                                      tmp_path / "results.json")
    entries = json.loads(results_file.read_text())
    if iou_type == "segm":  # documented: segm areas come from the masks
        entries = [{k: v for k, v in entry.items() if k != "bbox"} for entry in entries]
    ours = coco_eval(annotation_file, results_file, iou_type)
    assert ours == pytest.approx(direct_cocoeval(annotation_file, entries, iou_type))
    assert 0.0 < ours["AP"] < 1.0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_image_ids_restrict_the_evaluation(annotation_file, tmp_path, iou_type):
    predictions = [p for p in perturbed_predictions() if p["image_id"] in (10, 20)]
    results_file = write_coco_results(to_coco_results(predictions, CATEGORY_IDS), tmp_path / "results.json")
    entries = json.loads(results_file.read_text())
    if iou_type == "segm":
        entries = [{k: v for k, v in entry.items() if k != "bbox"} for entry in entries]
    ours = coco_eval(annotation_file, results_file, iou_type, image_ids=[20, 10])
    assert ours == pytest.approx(direct_cocoeval(annotation_file, entries, iou_type, image_ids=[10, 20]))
    # Image 30's ground truth, never predicted, would count as misses without the restriction.
    assert ours["AP"] > coco_eval(annotation_file, results_file, iou_type)["AP"]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_results_scores_one(annotation_file, tmp_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
    predictions = []
    for image_id in IMAGES:
        anns = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=[image_id]))
        predictions.append({"image_id": image_id, "boxes": [a["bbox"] for a in anns],
                            "labels": [CATEGORY_IDS.index(a["category_id"]) for a in anns],
                            "scores": [1.0] * len(anns),
                            "masks": [ground_truth.annToRLE(a) for a in anns]})  # counts as bytes
    results_file = write_coco_results(to_coco_results(predictions, CATEGORY_IDS), tmp_path / "gt.json")
    assert coco_eval(annotation_file, results_file, iou_type) == pytest.approx(dict.fromkeys(METRIC_NAMES, 1.0))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_empty_results_give_zeros(annotation_file, tmp_path, iou_type):
    empty = [{"image_id": i, "boxes": [], "labels": [], "scores": [], "masks": []} for i in IMAGES]
    results_file = write_coco_results(to_coco_results(empty, CATEGORY_IDS), tmp_path / "empty.json")
    assert json.loads(results_file.read_text()) == []
    assert coco_eval(annotation_file, results_file, iou_type) == dict.fromkeys(METRIC_NAMES, 0.0)
    assert coco_eval(annotation_file, results_file, iou_type, image_ids=[10]) == dict.fromkeys(METRIC_NAMES, 0.0)


def test_unknown_image_ids_and_iou_type_are_refused(annotation_file, tmp_path):
    results_file = write_coco_results(to_coco_results(perturbed_predictions(), CATEGORY_IDS), tmp_path / "r.json")
    with pytest.raises(ValueError, match="not in the annotation file"):
        coco_eval(annotation_file, results_file, "bbox", image_ids=[10, 99])
    with pytest.raises(ValueError, match="iou_type"):
        coco_eval(annotation_file, results_file, "keypoints")
