"""Save and load a model as a directory: ``model.safetensors``, ``config.json``, ``tokenizer.json`` and
``text_encoder_config.json``.

The directory alone rebuilds the model: no pickle is ever loaded, no other input is needed. A pretrained
text encoder's directory is not read again: ``text_encoder_config.json`` (transformers' config of the
encoder as built, e.g. a BERT from ``text.pretrained_path``) rebuilds its architecture, and ``config.json``
records its family and sizes in ``text``. A checkpoint without that file (older ones) rebuilds a RoBERTa
from ``config.json``'s ``text`` sizes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from unip2 import config_io
from unip2.config import ModelConfig
from unip2.inference import Model
from unip2.model.generalist import UniPerceiverV2
from unip2.model.tokenizer import TextTokenizer
from unip2.tasks import OPTION_CLASSES, TASKS, check_model, validate_task_options, with_registered_tasks

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
TEXT_ENCODER_CONFIG = "text_encoder_config.json"  # optional: checkpoints written before it rebuild a RoBERTa


def build_model(config: ModelConfig, tokenizer: TextTokenizer | None = None) -> Model:
    """A model from a (validated) config; the tokenizer defaults to ``config.text.tokenizer_path``. It predicts
    as Serve answers (``model.predict``, ``unip2.inference``)."""
    config_io.validate(config)
    validate_task_options(config)
    model = Model.from_config(config, tokenizer)
    check_model(model)
    return model


def save(model: UniPerceiverV2, directory: str | Path) -> Path:
    """Write weights, config and tokenizer into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS))
    text = model.text_encoder.described(model.config.text)
    config_io.save(dataclasses.replace(model.config, text=text), directory / CONFIG)
    (directory / TOKENIZER).write_text(model.tokenizer.to_json())
    (directory / TEXT_ENCODER_CONFIG).write_text(json.dumps(model.text_encoder.saved_config(), indent=2))
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    """The config of a saved model, read without building it. A missing folder or file is refused."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    missing = [name for name in (WEIGHTS, CONFIG, TOKENIZER) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder {directory} is incomplete: missing {', '.join(missing)}")
    data = upgrade_legacy_config(config_io.read_mapping(directory / CONFIG))
    # A task registered after the model was saved takes its default options.
    config = with_registered_tasks(config_io.from_dict(ModelConfig, data, keyed_classes=OPTION_CLASSES))
    config_io.validate(config)
    validate_task_options(config)
    return config


# Checkpoints saved before the config recorded its score families were saved with these, one temperature each.
_LEGACY_SCORE_FAMILIES = ("category", "vocabulary", "retrieval")


def upgrade_legacy_config(data: dict) -> dict:
    """A saved ``config.json`` in the current layout (older checkpoints keep loading)."""
    if not data.get("score_families"):
        data = {**data, "score_families": list(_LEGACY_SCORE_FAMILIES)}
    tasks = data.get("tasks") or {}
    inputs = data.pop("task_inputs", None) or {}
    # Flat keys of checkpoints saved before each task's options had a file of their own: old key → (tasks, field).
    legacy = {}
    for name, task in TASKS.items():
        for old, new in task.legacy_options.items():
            legacy[old] = (legacy.get(old, ((), new))[0] + (name,), new)
    if not (set(tasks) & set(legacy)) and not inputs:
        return data
    upgraded: dict[str, dict] = {}
    for old, value in tasks.items():
        names, new = legacy.get(old, ((old,), None))
        for name in names:
            if new is None:  # already a task's options
                upgraded.setdefault(name, {}).update(value)
            else:
                upgraded.setdefault(name, {})[new] = value
    for name, settings in inputs.items():
        upgraded.setdefault(name, {}).update({k: v for k, v in settings.items() if v is not None})
    return {**data, "tasks": upgraded}


def load(directory: str | Path, *, device: str | torch.device = "cpu") -> Model:
    """Rebuild a saved model (``model.predict`` answers as its Serve routes do). A missing folder or file is
    refused with its path named."""
    directory = Path(directory)
    config = load_config(directory)
    # The weights file already holds any pretrained weights: do not read the original files again.
    config = dataclasses.replace(
        config,
        backbone=dataclasses.replace(config.backbone, pretrained_path=None),
        text=dataclasses.replace(config.text, pretrained_path=None, tokenizer_path=None),
    )
    tokenizer = TextTokenizer.from_json((directory / TOKENIZER).read_text())
    saved_text_encoder = directory / TEXT_ENCODER_CONFIG
    text_encoder_config = json.loads(saved_text_encoder.read_text()) if saved_text_encoder.is_file() else None
    model = Model.from_config(config, tokenizer, text_encoder_config=text_encoder_config)
    check_model(model)
    load_model(model, str(directory / WEIGHTS), device=str(device))
    return model.to(device)


BACKBONE_PREFIX = "backbone.body."


def export_backbone(directory: str | Path, path: str | Path) -> Path:
    """Write the image backbone of a saved model (``directory``) as a weights file that
    ``BackboneConfig.pretrained_path`` takes (timm's parameter names, no ``backbone.body.`` prefix)."""
    load_config(directory)  # refuses an incomplete folder, naming it
    state = load_file(str(Path(directory) / WEIGHTS))
    backbone = {k.removeprefix(BACKBONE_PREFIX): v.contiguous() for k, v in state.items()
                if k.startswith(BACKBONE_PREFIX)}
    if not backbone:
        raise ValueError(f"{directory}: the weights hold no {BACKBONE_PREFIX}* tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(backbone, str(path))
    return path
