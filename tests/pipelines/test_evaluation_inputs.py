"""What evaluation reads, decided before any Ray work: the checkpoint's folder kinds and recorded data and
input settings, the zero-shot splits; bad input refused with a clear message, the command line exits 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import unip2
from pipelines.evaluation.batch_predictor import BatchPredictor
from pipelines.evaluate import main
from pipelines.evaluation.pipeline import ClassNamesMismatch, Evaluation, plan_evaluation, read_class_names
from pipelines.training.checkpoints import export_model, training_data_root
from unip2 import config_io
from unip2.data.manifest import read_rows
from unip2.run_config import load_run_config
from unip2.tasks import TASKS
from unip2.tasks.base import input_options


@pytest.fixture(scope="module")
def other_names_checkpoint(tiny_config, tmp_path_factory):
    """A tiny checkpoint whose COCO names are not the data's (one renamed, one missing)."""
    config = unip2.preset("tiny")
    config.class_names = dict(tiny_config.class_names)
    coco = list(config.class_names["coco"])
    config.class_names["coco"] = coco[:3] + ["purple hexagon"] + coco[4:-1]
    torch.manual_seed(0)
    return unip2.save(unip2.build_model(config), tmp_path_factory.mktemp("other") / "model")


@pytest.fixture(scope="module")
def training_checkpoint(tiny_config, embedded_data, tmp_path_factory):
    """A training checkpoint's layout (model/ + run_config.yaml) with per-task input settings recorded."""
    folder = tmp_path_factory.mktemp("training") / "checkpoint_0000010"
    config = unip2.preset("tiny")
    config.class_names = dict(tiny_config.class_names)
    for name, size in (("classification", 64), ("retrieval", 128)):
        config.tasks[name].image_size, config.tasks[name].max_text_length = size, 16
    torch.manual_seed(0)
    unip2.save(unip2.build_model(config), folder / "model")
    run = load_run_config(overrides=[f"data.root={embedded_data}"])
    config_io.save(run, folder / "run_config.yaml")
    return folder


def test_plan_covers_every_task_with_data(tiny_checkpoint, embedded_data):
    plan = plan_evaluation(tiny_checkpoint, embedded_data)
    assert plan.tasks == list(TASKS)
    flickr = Evaluation("retrieval_flickr30k", "retrieval", "flickr30k", "test")
    assert plan.zero_shot == [flickr] and plan.evaluations[-1] == flickr
    assert Evaluation("retrieval", "retrieval", "coco_captions", "val") in plan.evaluations
    test = plan_evaluation(tiny_checkpoint, embedded_data, split="test")
    assert test.tasks == ["captioning", "retrieval", "language_modelling"] and test.zero_shot == [flickr]
    assert "coco_instances/test" in test.skipped_tasks["detection"] and "imagenet" in test.skipped_tasks[
        "classification"]
    assert plan_evaluation(tiny_checkpoint, embedded_data, tasks=["captioning"]).zero_shot == []


def test_flickr30k_is_evaluated_only_where_the_data_has_it(tiny_checkpoint, embedded_data, tmp_path):
    def data_with(datasets: set[str]):
        folder = tmp_path / "-".join(sorted(datasets))
        shutil.copytree(embedded_data, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["datasets"] = {k: v for k, v in manifest["datasets"].items() if k in datasets}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    without = plan_evaluation(tiny_checkpoint, data_with({"coco_captions"}), tasks=["retrieval"])
    assert without.tasks == ["retrieval"] and without.zero_shot == [] and without.skipped_tasks == {}
    only_flickr = plan_evaluation(tiny_checkpoint, data_with({"flickr30k"}), tasks=["retrieval"])
    assert only_flickr.tasks == [] and [e.key for e in only_flickr.evaluations] == ["retrieval_flickr30k"]


def test_a_training_checkpoint_and_the_final_folder_both_record_their_data(training_checkpoint, embedded_data,
                                                                          tmp_path):
    plan = plan_evaluation(training_checkpoint, embedded_data)
    assert plan.checkpoint_dir == training_checkpoint / "model"
    assert plan.config.task_input_settings("classification").image_size == 64
    assert training_data_root(training_checkpoint) == embedded_data
    assert training_data_root(training_checkpoint / "model") == embedded_data  # the run config one folder up
    final = export_model(training_checkpoint, tmp_path / "run" / "checkpoint")
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors", "run_config.yaml",
                                                       "text_encoder_config.json", "tokenizer.json"]
    assert training_data_root(final) == embedded_data and unip2.load(final).config == plan.config


def test_evaluation_preprocesses_each_task_as_the_checkpoint_records(training_checkpoint, embedded_data):
    predictor = BatchPredictor(str(training_checkpoint / "model"), {"imagenet": ["classification"]},
                               {"imagenet": ["label"]}, {})
    rows = read_rows(embedded_data, "coco_captions", "val", columns=["image", "image_id", "captions"])[:2]
    rows = {key: [row[key] for row in rows] for key in rows[0]}
    def prepared(name):
        settings = input_options(predictor.model.config.task_input_settings(name))
        return TASKS[name].preprocess_decodable(rows, **settings, tokenizer=predictor.model.tokenizer, train=False,
                                                rng=np.random.default_rng(0))[0]

    sizes = {name: prepared(name)["images"].shape[-1] for name in TASKS if name != "language_modelling"}
    assert sizes == {"classification": 64, "detection": 96, "instance_segmentation": 96, "captioning": 96,
                     "retrieval": 128}  # recorded, else the tiny preset's image_size
    assert prepared("retrieval")["input_ids"].shape[1] <= 16
    (prediction,) = predictor.predict_rows(TASKS["retrieval"], {k: v[:1] for k, v in rows.items()})
    assert prediction["text_embeddings"].shape[0] == 5 and np.isfinite(prediction["image_embedding"]).all()


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


def test_without_data_the_recorded_training_data_is_required(tiny_checkpoint, training_checkpoint, embedded_data,
                                                            tmp_path, capsys):
    def run(checkpoint) -> str:
        assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
        return capsys.readouterr().err

    assert "checkpoint folder not found" in run(tmp_path / "nowhere")
    message = run(tiny_checkpoint)
    assert "records no training data" in message and "run_config.yaml" in message and "--data" in message
    moved = tmp_path / "moved"
    shutil.copytree(training_checkpoint, moved)
    config = config_io.read_mapping(moved / "run_config.yaml")
    config["data"]["root"] = str(tmp_path / "gone")
    (moved / "run_config.yaml").write_text(json.dumps(config))
    message = run(moved)
    assert f"trained on {tmp_path / 'gone'}" in message and "no longer exists" in message
    config["data"]["root"] = None
    (moved / "run_config.yaml").write_text(json.dumps(config))
    assert "data.root is not set" in run(moved / "model")
    assert not (tmp_path / "out").exists()
