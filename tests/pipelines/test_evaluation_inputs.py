"""Bad evaluation input is refused before any Ray work, with a clear message; the command line exits 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import unip2
from pipelines.evaluate import main
from pipelines.evaluation import ClassNamesMismatch, plan_evaluation, read_class_names


@pytest.fixture(scope="module")
def other_names_checkpoint(tiny_config, tmp_path_factory):
    """A tiny checkpoint whose COCO names are not the data's (one renamed, one missing)."""
    config = unip2.preset("tiny")
    config.class_names = dict(tiny_config.class_names)
    coco = list(config.class_names["coco"])
    config.class_names["coco"] = coco[:3] + ["purple hexagon"] + coco[4:-1]
    torch.manual_seed(0)
    return unip2.save(unip2.build_model(config), tmp_path_factory.mktemp("other") / "model")


def test_plan_covers_every_task_with_data(tiny_checkpoint, embedded_data):
    plan = plan_evaluation(tiny_checkpoint, embedded_data)
    assert plan.tasks == ["classification", "detection", "instance_segmentation", "captioning", "retrieval"]
    test = plan_evaluation(tiny_checkpoint, embedded_data, split="test")
    assert test.tasks == ["captioning", "retrieval"]
    assert "coco_instances/test" in test.skipped_tasks["detection"] and "imagenet" in test.skipped_tasks[
        "classification"]


def test_class_names_that_differ_from_the_data_are_refused(other_names_checkpoint, embedded_data):
    with pytest.raises(ClassNamesMismatch) as error:
        plan_evaluation(other_names_checkpoint, embedded_data, tasks=["detection"])
    message = str(error.value)
    assert "'coco'" in message and "has 11" in message and "has 12" in message
    assert "index 3" in message and "'purple hexagon'" in message and "--class-names" in message
    # classification's names (imagenet) still match
    assert plan_evaluation(other_names_checkpoint, embedded_data, tasks=["classification"]).tasks == ["classification"]


def test_candidate_names_override_the_checkpoints(other_names_checkpoint, embedded_data, tmp_path):
    names = ["green star", "red circle", "cyan moon"]
    plan = plan_evaluation(other_names_checkpoint, embedded_data, tasks=["detection"], class_names={"coco": names})
    assert plan.candidate_names == {"coco": names}
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n\n")
    (tmp_path / "names.json").write_text(json.dumps({"coco": names}))
    assert read_class_names(tmp_path / "names.txt") == names
    assert read_class_names(tmp_path / "names.json") == {"coco": names}
    plan = plan_evaluation(other_names_checkpoint, embedded_data, class_names=read_class_names(tmp_path / "names.txt"))
    assert plan.candidate_names == {"imagenet": names, "coco": names}


def test_command_line_exits_2_on_bad_input(tiny_checkpoint, other_names_checkpoint, embedded_data, tmp_path,
                                           capsys):
    def run(*args: str, data=embedded_data) -> str:
        assert main(["--data", str(data), "--out", str(tmp_path / "out"), *args]) == 2
        return capsys.readouterr().err

    assert "checkpoint folder not found" in run("--checkpoint", str(tmp_path / "nowhere"))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_checkpoint, incomplete)
    (incomplete / "model.safetensors").unlink()
    assert "missing model.safetensors" in run("--checkpoint", str(incomplete))
    assert "differ" in run("--checkpoint", str(other_names_checkpoint), "--tasks", "detection")
    assert "unknown task 'segmentation'" in run("--checkpoint", str(tiny_checkpoint), "--tasks", "segmentation")
    assert "class names file not found" in run("--checkpoint", str(tiny_checkpoint), "--class-names",
                                               str(tmp_path / "none.txt"))
    assert "no manifest.json" in run("--checkpoint", str(tiny_checkpoint), data=tmp_path)
    assert not (tmp_path / "out").exists()
