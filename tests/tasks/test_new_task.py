"""Adding a task is its file, its registry lines and its test, nothing else: a seventh task with its own dataset (its
own schema, source format and rows), its own label space and its own score family goes through the project's
commands as a user runs them.

The test copies the project's code, adds the task's file and its two registry lines there, and in that copy runs
``pipelines/prepare_data.py --task-data`` (the task reads its source; an undecodable image is skipped and counted),
``pipelines/train.py`` (the run set-up's data checks, 2 Ray Train workers, the checkpoint, the evaluation with the
task's metric) and a script that loads the checkpoint and serves it with Ray Serve, calling the task's route.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TASK_FILE = '''"""Counting: how many objects an image shows, scored against the names of the counts (a test's task)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from unip2.data.task_datasets import SourceRows
from unip2.tasks.classification import Classification
from unip2.tasks.routes import Route

COUNTS = ["one object", "two objects", "three or more objects"]


@dataclass
class CountRequest:
    top_k: int = field(default=3, metadata={"ge": 1, "le": 3, "description": "counts returned, best first"})


class ShapeCount(Classification):
    name = "shape_count"
    dataset = "shape_counts"
    dataset_schema = pa.schema([pa.field("image", pa.binary()), pa.field("image_id", pa.int64()),
                                pa.field("file_name", pa.string()), pa.field("width", pa.int32()),
                                pa.field("height", pa.int32()), pa.field("label", pa.int32())])
    label_space = "counts"
    candidate_family = "count"
    metric = "top1"
    headlines = ()
    legacy_options = {}
    pretrains = None
    routes = (Route("/v1/count", "How many objects the image shows", CountRequest, shows="labels"),)

    def read_source(self, source):
        """A folder of <split>/<file>.jpg with counts.json: {split: {file: number of objects}}."""
        counts = json.loads((Path(source) / "counts.json").read_text())

        def rows(split):
            for index, (file, count) in enumerate(sorted(counts[split].items())):
                yield {"image": (Path(source) / split / file).read_bytes(), "image_id": index, "file_name": file,
                       "label": min(count, 3) - 1}

        return SourceRows(splits={split: rows(split) for split in counts}, class_names={"counts": COUNTS})
'''
REGISTRY_IMPORT = "from unip2.tasks.shape_count import ShapeCount\n"
REGISTRY_ENTRY = '    "shape_count": ShapeCount(),\n'

SERVE_SCRIPT = '''"""Load the trained checkpoint, serve it, call the new task's route."""
import json
import sys

import ray
import requests

import unip2
from pipelines.run import ray_runtime
from serve.app import AppArgs, build_app
from serve.local_run import run_local, stop_local

checkpoint, image = sys.argv[1], sys.argv[2]
model = unip2.load(checkpoint)
with ray_runtime.spawning_local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
try:
    url = run_local(build_app(AppArgs(checkpoint=checkpoint, model_num_cpus=0.5, ingress_num_cpus=0.25,
                                      warmup=False)), name="count")
    answer = requests.post(url + "/v1/count", files={"image": open(image, "rb").read()}, timeout=120)
    described = requests.get(url + "/v1/tasks", timeout=60).json()["tasks"]["shape_count"]
    stop_local()
finally:
    ray.shutdown()
print(json.dumps({"families": list(model.scorer.families), "options": sorted(model.config.tasks),
                  "status": answer.status_code, "answer": answer.json(), "described": described}))
'''


def project_with_the_task(folder: Path) -> Path:
    """A copy of the project's code with the new task's file and its registry lines added."""
    for package in ("unip2", "pipelines", "serve"):
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "unip2" / "tasks" / "shape_count.py").write_text(TASK_FILE)
    registry = folder / "unip2" / "tasks" / "__init__.py"
    text = registry.read_text()
    anchor_import = "from unip2.tasks.retrieval import Retrieval\n"
    anchor_entry = '    "language_modelling": LanguageModelling(),\n'
    assert anchor_import in text and anchor_entry in text
    registry.write_text(text.replace(anchor_import, anchor_import + REGISTRY_IMPORT)
                        .replace(anchor_entry, anchor_entry + REGISTRY_ENTRY))
    (folder / "serve_the_task.py").write_text(SERVE_SCRIPT)
    return folder


def count_source(embedded_raw: Path, folder: Path) -> Path:
    """The task's source format, made from the shapes world's COCO images and their object counts; one file of
    the training split is not an image."""
    counts = {}
    for split in ("train", "val"):
        instances = json.loads((embedded_raw / "coco" / "annotations" / f"instances_{split}2017.json").read_text())
        objects = {}
        for annotation in instances["annotations"]:
            objects[annotation["image_id"]] = objects.get(annotation["image_id"], 0) + 1
        (folder / split).mkdir(parents=True)
        counts[split] = {}
        for image in instances["images"]:
            if objects.get(image["id"]):
                shutil.copy(embedded_raw / "coco" / f"{split}2017" / image["file_name"], folder / split)
                counts[split][image["file_name"]] = objects[image["id"]]
    (folder / "train" / "broken.jpg").write_bytes(b"not an image")
    counts["train"]["broken.jpg"] = 1
    (folder / "counts.json").write_text(json.dumps(counts))
    return folder


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the copy's own local Ray
    env["PYTHONPATH"] = str(cwd)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done


def test_a_seventh_task_with_its_own_data_trains_evaluates_and_serves_from_its_file_alone(embedded_raw, tmp_path):
    project = project_with_the_task(tmp_path / "project")
    source = count_source(embedded_raw, tmp_path / "counts")
    data = tmp_path / "data"

    run([sys.executable, "pipelines/prepare_data.py", "--task-data", "shape_count", str(source), "--out", str(data)],
        project)
    manifest = json.loads((data / "manifest.json").read_text())
    assert set(manifest["datasets"]) == {"shape_counts"} and manifest["class_names"]["counts"][0] == "one object"
    assert manifest["skipped"]["shape_counts"]["train"] == {"undecodable": 1}

    out = tmp_path / "run"
    run([sys.executable, "pipelines/train.py", "--out", str(out), f"data.root={data}",
         f"data.cache_dir={tmp_path / 'cache'}", "tasks={shape_count: {batch_size: 4}}", "pretrain.encoders=[]",
         "train.steps=4", "train.log_every=2", "train.checkpoint_every=4", "optim.warmup_steps=1",
         "scale.num_workers=2", "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25",
         "model.proposals.num_queries=12", "model.image_size=64"], project)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["shape_count"]["top1"] <= 1.0 and metrics["shape_count"]["num_images"] > 0

    image = next((source / "val").glob("*.jpg"))
    served = json.loads(run([sys.executable, "serve_the_task.py", str(out / "checkpoint"), str(image)],
                            project).stdout.strip().splitlines()[-1])
    assert "count" in served["families"] and "shape_count" in served["options"]
    assert served["status"] == 200 and served["answer"]["task"] == "shape_count"
    assert set(served["answer"]["top_names"]) <= {"one object", "two objects", "three or more objects"}
    assert served["described"]["routes"][0]["path"] == "/v1/count"
