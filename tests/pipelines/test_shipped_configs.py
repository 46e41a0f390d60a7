"""Every shipped run config loads and validates; the default file is exactly the built-in default."""

from pathlib import Path

import pytest

from unip2.run_config import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "pipelines" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_opens_with_its_command(path):
    config = load_run_config(path)
    assert config.tasks
    opening = "\n".join(path.read_text().splitlines()[:4])
    assert opening.startswith("#") and "python pipelines/train.py" in opening


def test_default_file_equals_the_builtin_default():
    assert load_run_config(CONFIGS[[p.name for p in CONFIGS].index("default.yaml")]) == load_run_config()


def test_paper_presets_in_real_data_configs():
    by_name = {p.name: load_run_config(p) for p in CONFIGS}
    assert by_name["base.yaml"].model.backbone.name.startswith("swin_base")
    assert by_name["large.yaml"].model.backbone.name.startswith("swin_large")
