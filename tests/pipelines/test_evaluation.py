"""Batch evaluation through Ray Data on the embedded data with the untrained tiny checkpoint.

One full evaluation for the module (every task and Flickr30k zero-shot retrieval, METEOR off), and the
command line joining the test run's Ray on a copy of the data with corrupt images, given a training
checkpoint that records that copy as its data and per-task input settings.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import unip2
from unip2 import config_io
from unip2.data.manifest import load_manifest, read_rows
from unip2.eval import coco_eval
from unip2.run_config import load_run_config
from unip2.tasks import TASKS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def evaluation(ray_local, tiny_checkpoint, embedded_data, tmp_path_factory):
    from pipelines.evaluation.pipeline import evaluate

    out = tmp_path_factory.mktemp("evaluation")
    return evaluate(tiny_checkpoint, embedded_data, split="val", out_dir=out, batch_size=8, meteor=False), out


def test_every_task_is_evaluated_and_every_file_written(evaluation, embedded_data):
    metrics, out = evaluation
    for name, task in TASKS.items():
        assert task.metric in metrics[name], name
    for name in ("metrics.json", "report.md", "predictions.png", "detections.json", "segmentations.json",
                 "captions.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["skipped_images"] == dict.fromkeys([*TASKS, "retrieval_flickr30k"], 0)
    assert metrics["skipped_tasks"] == {}
    assert metrics["split"] == "val" and metrics["wall_time_s"] > 0 and metrics["parameters"] > 0
    assert metrics["annotations"]["instances"].endswith("instances_val2017.json")

    rows = {dataset: read_rows(embedded_data, dataset, "val", columns=["image_id"])
            for dataset in ("imagenet", "coco_instances", "coco_captions")}
    assert metrics["classification"]["num_images"] == len(rows["imagenet"])
    assert metrics["detection"]["num_images"] == len(rows["coco_instances"])
    assert metrics["retrieval"]["num_images"] == len(rows["coco_captions"])
    captions = json.loads((out / "captions.json").read_text())
    assert sorted(c["image_id"] for c in captions) == sorted(r["image_id"] for r in rows["coco_captions"])
    assert all(isinstance(c["caption"], str) for c in captions)
    segmentations = json.loads((out / "segmentations.json").read_text())
    assert segmentations and all("segmentation" in s and "bbox" in s for s in segmentations)
    assert 0.0 <= metrics["classification"]["top1"] <= metrics["classification"]["top5"] <= 1.0
    assert metrics["captioning"]["METEOR"] is None and metrics["captioning"]["CIDEr"] >= 0.0

    report = (out / "report.md").read_text()
    assert "not comparable" in report and "unip2 shapes world" in report
    assert "| Uni-Perceiver v2 BASE (Swin-B), paper" in report and "58.6" in report and "122.5" in report
    assert f"{100 * metrics['classification']['top1']:.1f}" in report
    with Image.open(out / "predictions.png") as picture:
        assert picture.width >= 600 and picture.height >= 600


def test_retrieval_is_evaluated_zero_shot_on_the_flickr30k_test_split(evaluation, embedded_data):
    metrics, out = evaluation
    flickr = metrics["retrieval_flickr30k"]
    rows = read_rows(embedded_data, "flickr30k", "test", columns=["captions"])
    assert flickr["num_images"] == len(rows) == 12 and flickr["num_texts"] == sum(len(r["captions"]) for r in rows)
    assert all(0.0 <= flickr[key] <= 1.0 for key in ("i2t_R@1", "t2i_R@1", "i2t_R@10", "t2i_R@10"))
    assert flickr["R@1"] == (flickr["i2t_R@1"] + flickr["t2i_R@1"]) / 2
    assert metrics["zero_shot"] == {"retrieval_flickr30k": {"task": "retrieval", "dataset": "flickr30k",
                                                            "split": "test"}}
    assert metrics["retrieval"]["num_images"] != flickr["num_images"]  # COCO val is another set of rows
    report = (out / "report.md").read_text()
    ours = next(line for line in report.splitlines() if line.startswith("| ours")).split(" | ")
    coco, flickr_cells = metrics["retrieval"], [ours[8], ours[10].rstrip(" |")]
    assert [ours[7], ours[9]] == [f"{100 * coco['i2t_R@1']:.1f}", f"{100 * coco['t2i_R@1']:.1f}"]
    assert flickr_cells == [f"{100 * flickr['i2t_R@1']:.1f}", f"{100 * flickr['t2i_R@1']:.1f}"]
    assert "### retrieval_flickr30k (zero-shot: flickr30k test split)" in report


def test_detection_ap_equals_coco_eval_of_the_written_detections(evaluation, embedded_data):
    metrics, out = evaluation
    image_ids = [row["image_id"] for row in read_rows(embedded_data, "coco_instances", "val", columns=["image_id"])]
    annotations = metrics["annotations"]["instances"]
    direct = coco_eval(annotations, out / "detections.json", "bbox", image_ids=image_ids)
    assert direct == {key.removeprefix("bbox_"): value for key, value in metrics["detection"].items()
                      if key.startswith("bbox_")}
    direct = coco_eval(annotations, out / "segmentations.json", "segm", image_ids=image_ids)
    assert direct["AP"] == metrics["instance_segmentation"]["segm_AP"]


def _corrupt(folder: Path, dataset: str, row: int) -> int:
    """Replace one image of ``dataset``/val's first shard by bytes that decode as nothing; its image_id."""
    path = folder / dataset / "val" / "part-00000.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[row] = b"\x89PNG\r\n\x1a\n truncated"
    index = table.schema.get_field_index("image")
    pq.write_table(table.set_column(index, "image", pa.array(images, pa.binary())), path)
    return table.column("image_id")[row].as_py()


def test_command_line_skips_undecodable_images_on_the_running_ray(ray_local, tiny_config, embedded_data,
                                                                  tmp_path):
    """The CLI joins the test run's Ray (RAY_ADDRESS), given a training checkpoint (model/ + run_config.yaml,
    classification recorded at 64 px) and no --data: it evaluates the data the run config records, a copy
    with one corrupt image in each of two splits, with other candidate names for detection (open vocabulary,
    from a --class-names file)."""
    data = tmp_path / "data"
    shutil.copytree(embedded_data, data)
    _corrupt(data, "imagenet", 1)
    bad_id = _corrupt(data, "coco_instances", 2)
    manifest = load_manifest(data)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"coco": manifest["class_names"]["coco"][::-1] + ["cyan moon"]}))
    checkpoint = tmp_path / "run" / "checkpoint_0000004"
    config = copy.deepcopy(tiny_config)
    config.tasks["classification"].image_size, config.tasks["classification"].max_text_length = 64, 16
    torch.manual_seed(0)
    unip2.save(unip2.build_model(config), checkpoint / "model")
    config_io.save(load_run_config(overrides=[f"data.root={data}"]), checkpoint / "run_config.yaml")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "evaluate.py"), "--checkpoint", str(checkpoint),
         "--tasks", "classification,detection", "--max-images", "6", "--batch-size", "4",
         "--class-names", str(names), "--fast", "--out", str(out)],
        env=os.environ | {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}, capture_output=True,
        text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # metrics.json is printed last; Ray may have written log lines to stdout before it.
    assert json.loads(result.stdout[result.stdout.rindex("\n{\n") + 1:] if "\n{\n" in result.stdout
                      else result.stdout) == metrics
    assert metrics["data"] == str(data) and metrics["checkpoint"] == str(checkpoint)
    assert metrics["skipped_images"] == {"classification": 1, "detection": 1}
    assert metrics["classification"]["num_images"] == 5 and metrics["detection"]["num_images"] == 5
    assert metrics["skipped_tasks"] == {} and metrics["candidate_names"] == {"coco": 13}
    detections = json.loads((out / "detections.json").read_text())
    assert detections and bad_id not in {d["image_id"] for d in detections}
    assert {d["category_id"] for d in detections} <= set(manifest["coco_category_ids"])
    assert "instance_segmentation" not in metrics and not (out / "segmentations.json").exists()
