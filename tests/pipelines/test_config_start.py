"""Paper configs cannot start wrong: large.yaml states only what differs from base.yaml; --print-config shows the
resolved config; a start without the encoders' weights is refused before anything runs, naming what to get."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.train import main
from unip2 import config_io
from unip2.config_io import ConfigError
from unip2.run_config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "configs"


def test_large_states_only_what_differs_from_base():
    text = (CONFIGS / "large.yaml").read_text()
    assert "extends: base.yaml" in text
    keys = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(keys) <= 6
    base, large = load_run_config(CONFIGS / "base.yaml"), load_run_config(CONFIGS / "large.yaml")
    assert large.model.backbone.name.startswith("swin_large") and base.model.backbone.name.startswith("swin_base")
    same = {key: value for key, value in config_io.to_dict(large).items() if key != "model"}
    assert same == {key: value for key, value in config_io.to_dict(base).items() if key != "model"}


def test_extends_is_refused_in_a_circle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain: {steps: 3}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends back"):
        load_run_config(tmp_path / "a.yaml")


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    done = subprocess.run([sys.executable, "pipelines/train.py", "--config", "pipelines/configs/large.yaml",
                           "--print-config", "train.steps=7"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["model"]["preset"] == "large" and printed["train"]["steps"] == 7
    assert printed["tasks"]["instance_segmentation"]["batch_size"] == 2  # from base.yaml


def test_a_paper_config_without_weights_is_refused_naming_what_to_download(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--config", str(CONFIGS / "base.yaml"), "--out", str(out), f"data.root={tmp_path}"]) == 2
    error = capsys.readouterr().err
    assert "model.backbone.pretrained_path and model.text.pretrained_path" in error
    assert "hf download timm/swin_base_patch4_window7_224.ms_in22k" in error
    assert "pretrain.encoders=[image,text]" in error and "pretrain.random_init=allow" in error
    assert not out.exists()  # refused before the run folder, the data or Ray
    assert main(["--config", str(CONFIGS / "base.yaml"), "--out", str(out), f"data.root={tmp_path}",
                 "model.backbone.pretrained_path=/weights/swin.safetensors",
                 "model.text.pretrained_path=/weights/roberta", "--print-config"]) == 0
