"""Each task's validation metrics from its gathered predictions (the metric code is ``unip2.eval``).

``TASK_METRICS[name](output, context) -> (metrics, files)``: ``metrics`` a JSON-ready dict holding the
task's headline key ``TASKS[name].metric``; ``files`` {kind: path} of the result files written.

Predicted labels are matched to the data's classes *by name*, so an open-vocabulary evaluation (other
candidate names than the checkpoint's) is scored against the data's labels: a candidate name that is
not a class of the data is never right (classification) or is left out of the COCO results (detection,
counted in "dropped_detections").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unip2.eval import (
    caption_metrics,
    classification_metrics,
    coco_eval,
    retrieval_metrics,
    to_coco_results,
    write_coco_results,
)


@dataclass
class TaskOutput:
    """One task's predictions over the evaluated (decodable) rows, with the rows' annotations, aligned."""

    predictions: list[dict]
    labels: list[int] | None = None
    """The ``label`` column (classification)."""
    references: list[list[str]] | None = None
    """The ``captions`` column (captioning, retrieval)."""


@dataclass
class MetricContext:
    out_dir: Path
    data_class_names: dict[str, list[str]]
    """The data's classes per label space (manifest ``class_names``)."""
    category_ids: list[int]
    """COCO category id of each ``data_class_names["coco"]`` entry."""
    instances_file: Path | None
    """COCO instances JSON of the split (ground truth of detection and instance segmentation)."""
    meteor: bool = True


def classification(output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
    index = {name: i for i, name in enumerate(context.data_class_names["imagenet"])}
    top_labels = np.asarray([[index.get(name, -1) for name in p["top_names"]] for p in output.predictions])
    metrics = classification_metrics(np.asarray(output.labels, dtype=np.int64), top_labels)
    return metrics | {"num_images": len(output.predictions)}, {}


def detection(output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
    return _coco_metrics(output, context, "detections.json", ("bbox",))


def instance_segmentation(output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
    return _coco_metrics(output, context, "segmentations.json", ("segm", "bbox"))


def captioning(output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
    captions = [{"image_id": int(p["image_id"]), "caption": p["caption"]} for p in output.predictions]
    path = write_coco_results(captions, context.out_dir / "captions.json")
    predictions = {c["image_id"]: c["caption"] for c in captions}
    references = {int(p["image_id"]): refs for p, refs in zip(output.predictions, output.references)}
    return caption_metrics(predictions, references, meteor=context.meteor), {"captions": str(path)}


def retrieval(output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
    """Every image of the split against every caption of the split; similarity = cosine (the model's
    score is cosine × a scale, so the ranking is the same). "R@1" = mean of i2t and t2i R@1."""
    kept = [p for p in output.predictions if len(p.get("text_embeddings", ())) > 0]
    images = _unit(np.stack([p["image_embedding"] for p in kept]))                    # I×D
    texts = _unit(np.concatenate([p["text_embeddings"] for p in kept]))               # T×D
    text_to_image = np.repeat(np.arange(len(kept)), [len(p["text_embeddings"]) for p in kept])
    metrics = retrieval_metrics(images @ texts.T, text_to_image)
    metrics["R@1"] = (metrics["i2t_R@1"] + metrics["t2i_R@1"]) / 2
    return metrics | {"num_images": len(kept), "num_texts": int(len(texts)),
                      "images_without_text": len(output.predictions) - len(kept)}, {}


TASK_METRICS: dict[str, Callable[[TaskOutput, MetricContext], tuple[dict, dict]]] = {
    "classification": classification,
    "detection": detection,
    "instance_segmentation": instance_segmentation,
    "captioning": captioning,
    "retrieval": retrieval,
}
"""Keyed like ``unip2.tasks.TASKS`` (a test checks that every registered task has an entry)."""


def _coco_metrics(output: TaskOutput, context: MetricContext, file_name: str,
                  iou_types: tuple[str, ...]) -> tuple[dict, dict]:
    predictions, dropped = _to_data_labels(output.predictions, context.data_class_names["coco"])
    path = write_coco_results(to_coco_results(predictions, context.category_ids), context.out_dir / file_name)
    image_ids = [int(p["image_id"]) for p in predictions]
    metrics: dict = {}
    for iou_type in iou_types:
        scores = coco_eval(context.instances_file, path, iou_type, image_ids=image_ids)
        metrics |= {f"{iou_type}_{name}": value for name, value in scores.items()}
    metrics |= {"num_images": len(image_ids), "dropped_detections": dropped}
    return metrics, {file_name.removesuffix(".json"): str(path)}


def _to_data_labels(predictions: list[dict], data_names: list[str]) -> tuple[list[dict], int]:
    """Detections relabelled by name into the data's classes; those of unknown names removed."""
    index = {name: i for i, name in enumerate(data_names)}
    relabelled, dropped = [], 0
    for prediction in predictions:
        keep = [i for i, name in enumerate(prediction["names"]) if name in index]
        dropped += len(prediction["names"]) - len(keep)
        entry = {"image_id": prediction["image_id"],
                 "boxes": [prediction["boxes"][i] for i in keep],
                 "labels": [index[prediction["names"][i]] for i in keep],
                 "scores": [prediction["scores"][i] for i in keep]}
        if "masks" in prediction:
            entry["masks"] = [prediction["masks"][i] for i in keep]
        relabelled.append(entry)
    return relabelled, dropped


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
