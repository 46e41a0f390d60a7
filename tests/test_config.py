"""The one config system: YAML + key=value overrides, unknown keys and bad values refused by name."""

import pytest

from unip2 import config_io
from unip2.config import ModelConfig
from unip2.config_io import ConfigError
from unip2.presets import PRESETS, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip(name, tmp_path):
    config = preset(name)
    config_io.save(config, tmp_path / "config.yaml")
    assert config_io.load(ModelConfig, tmp_path / "config.yaml") == config


def test_overrides_change_fields_with_types():
    config = config_io.load(ModelConfig, overrides=["decoder.num_layers=3", "backbone.out_indices=[1,2]",
                                                    "tasks.caption_label_smoothing=0.0"],
                            base=preset("tiny"))
    assert config.decoder.num_layers == 3
    assert config.backbone.out_indices == (1, 2)
    assert config.tasks.caption_label_smoothing == 0.0


@pytest.mark.parametrize("override, field", [
    ("decoder.num_layerz=3", "decoder.num_layerz"),
    ("decoder.num_layers=three", "decoder.num_layers"),
    ("decoder.top_k=9", "decoder.top_k"),
    ("image_size=100", "image_size"),
    ("tokens.use_global=yes please", "tokens.use_global"),
])
def test_bad_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        config_io.load(ModelConfig, overrides=[override], base=preset("tiny"))
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
