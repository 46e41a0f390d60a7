"""COCO box and mask AP: pycocotools' COCOeval on predictions in the official COCO results format.

Results file: a JSON list with one entry per detected object,

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

plus, for instance segmentation, ``"segmentation": {"size": [h, w], "counts": str}`` (compressed RLE at
the original image size). One file serves both ``iou_type="bbox"`` and ``"segm"``.

Metrics are COCOeval's ``stats[0:6]`` as fractions: AP (IoU .50:.95), AP50, AP75 and AP over small,
medium and large objects (APs, APm, APl). COCOeval gives -1 for an area range without any ground truth
among the evaluated images; that value is passed through.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def to_coco_results(predictions: Iterable[dict], category_ids: Sequence[int]) -> list[dict]:
    """Per-image predictions → one COCO result entry per object.

    Args:
        predictions: dicts {"image_id": int, "boxes": N×4 [x, y, w, h] pixels, "labels": N contiguous
            label indices, "scores": N floats, optional "masks": N RLE dicts {"size": [h, w], "counts"}}
            (the format of the detection / instance segmentation tasks' ``predict``).
        category_ids: COCO category id of each contiguous label (``category_ids[label]``).

    Returns:
        [{"image_id", "category_id", "bbox", "score"(, "segmentation")}, ...], JSON-ready.
    """
    results = []
    for prediction in predictions:
        image_id = int(prediction["image_id"])
        boxes, labels, scores = prediction["boxes"], prediction["labels"], prediction["scores"]
        masks = prediction.get("masks")
        lengths = {len(boxes), len(labels), len(scores)} | ({len(masks)} if masks is not None else set())
        if len(lengths) != 1:
            raise ValueError(f"image {image_id}: boxes, labels, scores (and masks) differ in length")
        for index, (box, label, score) in enumerate(zip(boxes, labels, scores)):
            entry = {"image_id": image_id, "category_id": int(category_ids[int(label)]),
                     "bbox": [float(v) for v in box], "score": float(score)}
            if masks is not None:
                entry["segmentation"] = _json_rle(masks[index])
            results.append(entry)
    return results


def write_coco_results(results: list[dict], path: str | Path) -> Path:
    """Write COCO result entries (e.g. from ``to_coco_results``) as a JSON list; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path


def coco_eval(annotation_file: str | Path, results_file: str | Path, iou_type: str,
              image_ids: list[int] | None = None) -> dict[str, float]:
    """COCOeval's AP metrics of a results file against a COCO instances annotation file.

    Args:
        annotation_file: COCO instances JSON (ground truth).
        results_file: COCO results JSON (see the module docstring).
        iou_type: "bbox" or "segm".
        image_ids: evaluate only these images (e.g. the ones that were predicted); None = every image
            of the annotation file.

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl"}: fractions; all 0.0 when there is no result to
        evaluate (COCO.loadRes cannot read an empty list).

    For "segm" the entries' "bbox" is dropped before loading, so pycocotools derives each detection's
    area (which decides its small / medium / large range) from its mask rather than its box.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    results = json.loads(Path(results_file).read_text())
    if not isinstance(results, list):
        raise ValueError(f"{results_file}: a COCO results file is a JSON list of detections")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print progress and tables
        ground_truth = COCO(str(annotation_file))
    known = set(ground_truth.getImgIds())
    if image_ids is not None:
        image_ids = sorted({int(i) for i in image_ids})
        _refuse_unknown(image_ids, known, "image_ids")
        wanted = set(image_ids)
        results = [entry for entry in results if entry["image_id"] in wanted]
    _refuse_unknown([entry["image_id"] for entry in results], known, f"{results_file}: image_id")
    if not results or image_ids == []:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    if iou_type == "segm":
        if any("segmentation" not in entry for entry in results):
            raise ValueError(f"{results_file}: segm evaluation needs a 'segmentation' in every entry")
        results = [{key: value for key, value in entry.items() if key != "bbox"} for entry in results]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}


def _json_rle(rle: dict) -> dict:
    """An RLE dict with ``counts`` as str (pycocotools encodes bytes) and ``size`` as ints."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("utf-8")
    elif not isinstance(counts, str):
        raise ValueError("masks must be compressed RLE (counts as str or bytes), not uncompressed lists")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def _refuse_unknown(ids: Iterable[int], known: set[int], what: str) -> None:
    unknown = sorted(set(ids) - known)
    if unknown:
        raise ValueError(f"{what}: {len(unknown)} image id(s) not in the annotation file, e.g. {unknown[:5]}")
