"""A sweep trial evaluates in its own process (no Ray Data pipeline or predictor actor to start): the same
rows, predictions and metrics as the Ray Data evaluation, for every task, on an untrained tiny model."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from pipelines.evaluation.pipeline import evaluate, plan_evaluation, predict_in_process, predict_splits
from unip2.data.manifest import split_files


@pytest.mark.parametrize("max_images, batch_size", [(5, 2), (None, 8)])
def test_in_process_predictions_equal_the_ray_data_ones(ray_local, tiny_checkpoint, embedded_data, max_images,
                                                        batch_size):
    plan = plan_evaluation(tiny_checkpoint, embedded_data, split="val")
    tasks, splits = defaultdict(list), {}
    for entry in plan.evaluations:
        tasks[entry.dataset].append(entry.task)
        splits[entry.dataset] = entry.split
    files = {dataset: split_files(embedded_data, dataset, split) for dataset, split in splits.items()}
    sizes = dict(batch_size=batch_size, concurrency=1, max_images=max_images, num_cpus=0.25)
    here = predict_in_process(plan.checkpoint_dir, files, dict(tasks), {}, **sizes)
    ray_data = predict_splits(plan.checkpoint_dir, files, dict(tasks), {}, **sizes)
    assert list(here) == list(ray_data) == list(files)
    for dataset in files:
        expected = max_images or int(plan.manifest["datasets"][dataset]["splits"][splits[dataset]]["rows"])
        assert here[dataset].num_rows == expected
        assert here[dataset].equals(ray_data[dataset]), dataset


def test_a_trial_evaluation_writes_what_the_ray_data_one_writes(ray_local, tiny_checkpoint, embedded_data, tmp_path):
    sizes = dict(split="val", max_images=4, batch_size=4, num_cpus=0.1, meteor=False)
    here = evaluate(tiny_checkpoint, embedded_data, out_dir=tmp_path / "here", in_process=True, **sizes)
    ray_data = evaluate(tiny_checkpoint, embedded_data, out_dir=tmp_path / "ray_data", **sizes)

    def comparable(metrics: dict) -> dict:
        return {k: v for k, v in metrics.items() if k not in ("files", "wall_time_s")}

    assert comparable(here) == comparable(ray_data)
    assert sorted(here["files"]) == sorted(ray_data["files"])
    for kind, path in here["files"].items():
        if path.endswith(".json") and kind != "metrics":
            assert json.loads(open(path).read()) == json.loads(open(ray_data["files"][kind]).read()), kind
