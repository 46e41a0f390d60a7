"""Per-task metrics from gathered predictions (each task's ``evaluate``, no Ray): perfect predictions score perfectly, labels are
matched to the data by name, the picture and the report are drawn from predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from pipelines.evaluation.report import write_report
from pipelines.evaluation.prediction_grid import Panel, draw_prediction_grid, grid_panels
from unip2.data.manifest import load_manifest, read_rows
from unip2.tasks import TASKS
from unip2.tasks.base import Task
from unip2.tasks.outputs import MetricContext, TaskOutput


def test_every_registered_task_has_metrics():
    assert all(type(task).evaluate is not Task.evaluate for task in TASKS.values())


@pytest.fixture(scope="module")
def context(embedded_data, tmp_path_factory):
    manifest = load_manifest(embedded_data)
    return MetricContext(out_dir=tmp_path_factory.mktemp("metrics"), data_class_names=manifest["class_names"],
                         category_ids=manifest["coco_category_ids"],
                         annotation_files={"instances": manifest["annotations"]["instances"]["val"]}, meteor=False)


@pytest.fixture(scope="module")
def ground_truth(embedded_data):
    """The val objects as predictions: score 1, boxes, names and masks of the annotations."""
    names = load_manifest(embedded_data)["class_names"]["coco"]
    rows = read_rows(embedded_data, "coco_instances", "val",
                     columns=["image_id", "boxes", "labels", "masks", "height", "width"])
    return [{"image_id": r["image_id"], "boxes": r["boxes"], "names": [names[i] for i in r["labels"]],
             "scores": [1.0] * len(r["labels"]),
             "masks": [{"size": [r["height"], r["width"]], "counts": c} for c in r["masks"]]} for r in rows]


def test_ground_truth_detections_score_ap_one_and_unknown_names_are_dropped(ground_truth, context):
    predictions = [dict(p) for p in ground_truth]
    first = predictions[0]
    for key, extra in (("boxes", [0.0, 0.0, 5.0, 5.0]), ("names", "purple hexagon"), ("scores", 0.9),
                       ("masks", first["masks"][0])):
        first[key] = [*first[key], extra]
    metrics, files = TASKS["instance_segmentation"].evaluate(TaskOutput(predictions), context)
    assert metrics["segm_AP"] == pytest.approx(1.0) and metrics["bbox_AP"] == pytest.approx(1.0)
    assert metrics["dropped_detections"] == 1 and metrics["num_images"] == len(ground_truth)
    assert files["segmentations"].endswith("segmentations.json")
    metrics, _ = TASKS["detection"].evaluate(TaskOutput(ground_truth[: len(ground_truth) // 2]), context)
    assert metrics["bbox_AP"] == pytest.approx(1.0)  # evaluated on the predicted images only


def test_classification_is_scored_by_name(context):
    names = context.data_class_names["imagenet"]
    predictions = [{"image_id": i, "top_names": [names[(i + 1) % len(names)], names[i % len(names)], "unknown"]}
                   for i in range(6)]
    metrics, _ = TASKS["classification"].evaluate(TaskOutput(predictions, {"label": list(range(6))}), context)
    assert metrics == {"top1": 0.0, "top5": 1.0, "num_images": 6}


def test_retrieval_ranks_by_cosine(context):
    eye = np.eye(8, dtype=np.float32)
    predictions = [{"image_id": i, "image_embedding": 3 * eye[i],
                    "text_embeddings": np.stack([eye[i], 0.5 * eye[i]])} for i in range(4)]
    predictions.append({"image_id": 9, "image_embedding": eye[5], "text_embeddings": np.zeros((0, 8))})
    metrics, _ = TASKS["retrieval"].evaluate(TaskOutput(predictions), context)
    assert metrics["i2t_R@1"] == metrics["t2i_R@1"] == metrics["R@1"] == 1.0
    assert metrics["num_texts"] == 8 and metrics["images_without_text"] == 1


def test_captioning_writes_captions_and_scores_them(context):
    predictions = [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "a blue star"}]
    references = [["a red circle", "one red circle"], ["a blue star on a wall"]]
    metrics, files = TASKS["captioning"].evaluate(TaskOutput(predictions, {"captions": references}), context)
    assert metrics["BLEU-1"] > 0.5 and metrics["METEOR"] is None
    assert (context.out_dir / "captions.json").read_text().count("image_id") == 2 and "captions" in files


def test_grid_draws_masks_boxes_and_captions(ground_truth, embedded_data, tmp_path):
    images = {r["image_id"]: r["image"] for r in read_rows(embedded_data, "coco_instances", "val",
                                                              columns=["image_id", "image"])}
    predictions = {"instance_segmentation": ground_truth,
                   "captioning": [{"image_id": ground_truth[3]["image_id"], "caption": "shapes on a wall"}]}
    panels = grid_panels(predictions, lambda dataset, ids: {i: images[i] for i in ids},
                         {"instance_segmentation": "coco_instances", "captioning": "coco_captions"})
    assert len(panels) == 9 and panels[0].lines == ['"shapes on a wall"']  # captioned images first
    assert panels[0].masks is not None and panels[0].names == ground_truth[3]["names"]
    faint = Panel(image=images[ground_truth[0]["image_id"]], title="faint", boxes=[[1, 1, 9, 9]], names=["x"],
                  scores=[0.01], lines=["an early model's caption \x7f\x00 with control bytes"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. matplotlib's "Glyph 127 missing from font(s)"
        path = draw_prediction_grid([*panels[:2], faint], tmp_path / "grid.png", columns=3)
    with Image.open(path) as picture:
        assert picture.size == (1260, 480)
        pixels = np.asarray(picture.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 100  # images drawn, not a blank canvas


def test_report_places_ours_beside_the_paper(tmp_path):
    metrics = {"classification": {"top1": 0.25, "top5": 0.5}, "checkpoint": "/x/ckpt", "split": "val",
               "data": "/x/data", "annotations": {"instances": None, "captions": None}, "skipped_images": {},
               "skipped_tasks": {"detection": "no data"}, "candidate_names": {}, "parameters": 4_800_000,
               "files": {}, "wall_time_s": 1.0}
    text = write_report(metrics, tmp_path / "report.md", data_description="unip2 shapes world").read_text()
    ours = next(line for line in text.splitlines() if line.startswith("| ours"))
    assert ours.split(" | ")[1:4] == ["4.8M", "25.0", "–"]
    assert "86.3" in text and "not comparable" in text and "no data" in text
