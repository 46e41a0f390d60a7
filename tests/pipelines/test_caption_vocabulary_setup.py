"""A run under ``model.tasks.captioning.vocabulary: training_captions`` fills the candidate ids from its training
captions before training, keeps them on resume, and the trained model scores exactly them."""

import pytest

import unip2
from pipelines.run.prepare import fill_task_options, prepare_run
from pipelines.training.trainer import fit
from unip2.config_io import ConfigError
from unip2.data.caption_vocabulary import training_caption_token_ids
from unip2.data.manifest import load_manifest
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import load_run_config

RESTRICTED = "model.tasks.captioning.vocabulary=training_captions"


def test_the_ids_are_filled_once_from_the_training_captions(embedded_data):
    manifest = load_manifest(embedded_data)
    run = load_run_config(overrides=[RESTRICTED, f"data.root={embedded_data}"])
    fill_task_options(run, embedded_data, manifest)
    expected = training_caption_token_ids(embedded_data, ["coco_captions"], tokenizer_for(run.model.text))
    assert run.model.tasks["captioning"].token_ids == expected
    resumed = load_run_config(overrides=[RESTRICTED, "model.tasks.captioning.token_ids=[2, 7]"])
    fill_task_options(resumed, embedded_data, manifest)
    assert resumed.model.tasks["captioning"].token_ids == [2, 7]  # a resumed run keeps the ids it saved
    full = load_run_config(overrides=[f"data.root={embedded_data}"])
    fill_task_options(full, embedded_data, manifest)
    assert full.model.tasks["captioning"].token_ids == []
    run.model.tasks["captioning"].token_ids = []
    with pytest.raises(ConfigError, match="model.tasks.captioning.vocabulary: training_captions needs training captions"):
        fill_task_options(run, embedded_data, {"datasets": {}})  # data without captions


def test_a_trained_model_scores_its_training_captions_tokens(ray_local, embedded_data, tmp_path):
    config = tmp_path / "captioning.yaml"
    config.write_text("model: {preset: tiny, image_size: 64, proposals: {num_queries: 12}}\n"
                      "tasks:\n  captioning: {batch_size: 2}\n")
    run, out, root = prepare_run(str(config), [RESTRICTED, f"data.root={embedded_data}", "pretrain.encoders=[]", "train.steps=2",
                                               "train.log_every=2", "train.checkpoint_every=2", "scale.num_workers=1",
                                               "scale.cpus_per_worker=0.5", "data.loader_cpus=0.25"],
                                 out=str(tmp_path / "run"))
    ids = training_caption_token_ids(embedded_data, ["coco_captions"], tokenizer_for(run.model.text))
    assert load_run_config(out / "run_config.yaml").model.tasks["captioning"].token_ids == ids  # saved before training
    model = unip2.load(fit(run, out=out, data_root=root) / "model")
    assert model.config.tasks["captioning"].token_ids == ids
