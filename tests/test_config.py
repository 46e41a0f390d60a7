"""The one config system: YAML + key=value overrides, unknown keys and bad values refused by name."""

import json
from pathlib import Path

import pytest

from unip2 import config_io
from unip2.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, TaskInputs
from unip2.persistence import load_config
from unip2.config_io import ConfigError
from unip2.presets import PRESETS, preset
from unip2.tasks import OPTION_CLASSES, with_registered_tasks

BASE_RUN = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "base.yaml"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name, tmp_path):
    config = preset(name)
    config_io.save(config, tmp_path / "config.yaml")
    assert config_io.load(ModelConfig, tmp_path / "config.yaml", keyed_classes=OPTION_CLASSES) == config


def test_overrides_change_fields_with_types():
    config = config_io.load(ModelConfig, overrides=["decoder.num_layers=3", "backbone.out_indices=[1,2]",
                                                    "tasks.captioning.label_smoothing=0.0"],
                            base=preset("tiny"), keyed_classes=OPTION_CLASSES)
    assert config.decoder.num_layers == 3
    assert config.backbone.out_indices == (1, 2)
    assert config.tasks["captioning"].label_smoothing == 0.0
    assert config.tasks["captioning"].max_length == 24  # the preset's other captioning options are kept


@pytest.mark.parametrize("override, field", [
    ("decoder.num_layerz=3", "decoder.num_layerz"),
    ("decoder.num_layers=three", "decoder.num_layers"),
    ("decoder.top_k=9", "decoder.top_k"),
    ("image_size=100", "image_size"),
    ("tokens.use_global=yes please", "tokens.use_global"),
    ("tasks.depth.image_size=64", "tasks.depth"),
    ("tasks.retrieval.image_size=100", "tasks.retrieval.image_size"),
    ("tasks.captioning.max_text_length=2", "tasks.captioning.max_text_length"),
    ("tasks.captioning.beam_size=0", "tasks.captioning.beam_size"),
    ("tasks.classification.beam_size=2", "tasks.classification.beam_size"),
    ("tasks.detection.max_per_image=0", "tasks.detection.max_per_image"),
    ("pixel_std=[0.2, 0.0, 0.2]", "pixel_std"),
    ("pixel_mean=[0.5, 0.5]", "pixel_mean"),
])
def test_bad_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        config_io.load(ModelConfig, overrides=[override], base=preset("tiny"), keyed_classes=OPTION_CLASSES)
    assert err.value.field == field


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        config_io.load(ModelConfig, tmp_path / "nope.yaml")


def test_exponent_floats_without_a_dot_are_numbers():
    from unip2.run_config import load_run_config

    assert load_run_config(overrides=["optim.lr=1e-4"]).optim.lr == 1e-4


@pytest.mark.parametrize("overrides, field", [
    (["scale.min_workers=3"], "scale.min_workers"),  # more than num_workers (2)
    (["scale.min_workers=0"], "scale.min_workers"),
    (["scale.min_workers=1", "train.sampling=mixed"], "scale.min_workers"),  # mixed draws depend on W
])
def test_bad_elastic_settings_are_refused_naming_the_field(overrides, field):
    from unip2.run_config import load_run_config

    with pytest.raises(ConfigError) as err:
        load_run_config(overrides=overrides)
    assert err.value.field == field


def test_learning_rate_follows_the_linear_rule():
    from unip2.run_config import load_run_config

    run = load_run_config(overrides=["scale.num_workers=8", "scale.min_workers=2"])
    assert run.learning_rate_scale(8) == 1.0 and run.learning_rate_scale(2) == 0.25
    # Accumulation alone leaves the run's own peak: the reference is the configured run's global batch.
    run = load_run_config(overrides=["scale.num_workers=8", "scale.min_workers=2", "train.accumulation_steps=4"])
    assert run.learning_rate_scale(8) == 1.0 and run.learning_rate_scale(2) == 0.25


def test_learning_rate_follows_the_global_batch_against_the_reference():
    from unip2.run_config import load_run_config

    # base.yaml's reading: optim.lr is the peak of the paper's 64 GPUs × 1 micro-batch.
    one_node = load_run_config(overrides=["scale.num_workers=8", "train.accumulation_steps=8",
                                          "optim.lr_reference_workers=64"])
    assert one_node.learning_rate_scale(8) == 1.0  # 8 GPUs × 8 micro-batches = the reference batch
    assert load_run_config(overrides=["scale.num_workers=8", "optim.lr_reference_workers=64"]
                           ).learning_rate_scale(8) == 0.125
    assert load_run_config(overrides=["scale.num_workers=64", "train.accumulation_steps=2",
                                      "optim.lr_reference_workers=64"]).learning_rate_scale(64) == 2.0


@pytest.mark.parametrize("overrides, field", [
    (["scale.num_workers=all"], "scale.num_workers"),
    (["scale.num_workers=0"], "scale.num_workers"),
    (["scale.resources_wait_s=-1"], "scale.resources_wait_s"),
    (["train.accumulation_steps=0"], "train.accumulation_steps"),
    (["train.accumulation_steps=auto"], "train.accumulation_steps"),
    (["optim.lr_reference_workers=0"], "optim.lr_reference_workers"),
])
def test_bad_scale_settings_are_refused_naming_the_field(overrides, field):
    from unip2.run_config import load_run_config

    with pytest.raises(ConfigError) as err:
        load_run_config(overrides=overrides)
    assert err.value.field == field


def test_task_input_settings_are_the_recorded_ones_else_the_model_defaults():
    config = preset("tiny")
    config.tasks["captioning"].image_size, config.tasks["captioning"].max_text_length = 64, 20
    config.tasks["classification"].image_size = 128
    config_io.validate(config)
    assert config.task_input_settings("captioning") == TaskInputs(
        image_size=64, max_text_length=20, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    classification = config.task_input_settings("classification")
    assert (classification.image_size, classification.max_text_length) == (128, config.text.max_length)
    detection = config.task_input_settings("detection")  # not set: the model-wide defaults
    assert (detection.image_size, detection.max_text_length) == (config.image_size, config.text.max_length)
    del config.tasks["retrieval"]  # a config recording no options for a task: the registry gives the defaults
    assert with_registered_tasks(config).task_options("retrieval") == type(preset("tiny").tasks["retrieval"])()
    with pytest.raises(KeyError, match="not a task of this model"):
        config.task_input_settings("depth")


def test_a_config_saved_before_task_inputs_existed_loads_with_the_defaults(tmp_path):
    old = config_io.to_dict(preset("tiny"))
    for key in ("pixel_mean", "pixel_std"):
        del old[key]
    # The layout before each task's options moved into its file: flat task options, input settings apart.
    old["tasks"] = {"classification_label_smoothing": 0.1, "caption_label_smoothing": 0.1, "caption_max_length": 24,
                    "caption_beam_size": 1, "detection_max_per_image": 20, "detection_category_weight": 2.0}
    old["task_inputs"] = {"retrieval": {"image_size": 64, "max_text_length": None}}
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = load_config(tmp_path)
    expected = preset("tiny")
    expected.tasks["retrieval"].image_size = 64
    assert config.tasks == {**expected.tasks, "retrieval": expected.tasks["retrieval"]}
    assert config == expected
    assert config.task_input_settings("retrieval").image_size == 64


def test_a_run_records_its_tasks_input_settings_in_the_model_it_trains():
    from unip2.run_config import load_run_config

    run = load_run_config(BASE_RUN, ["model.tasks.captioning.max_text_length=40"])
    sizes = {name: run.model.task_input_settings(name).image_size for name in run.tasks}
    assert sizes == {"classification": 224, "instance_segmentation": 1024, "captioning": 384, "retrieval": 384}
    assert run.model.task_input_settings("captioning").max_text_length == 40
    assert "detection" not in run.tasks and run.model.task_input_settings("detection").image_size == 512
    with pytest.raises(ConfigError) as err:  # input settings live with the model's task options only
        load_run_config(overrides=["tasks.captioning.image_size=64"])
    assert err.value.field == "tasks.captioning.image_size"


@pytest.mark.parametrize("override, field", [
    ("pretrain.encoders=[vision]", "pretrain.encoders"),
    ("pretrain.encoders=[image, image]", "pretrain.encoders"),
    ("pretrain.image_size=100", "pretrain.image_size"),
    ("pretrain.text_steps=0", "pretrain.text_steps"),
    ("pretrain.warmup_fraction=1", "pretrain.warmup_fraction"),
    ("optim.text_lr_scale=-1", "optim.text_lr_scale"),
])
def test_bad_stage1_settings_are_refused_naming_the_field(override, field):
    from unip2.run_config import load_run_config

    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert err.value.field == field
