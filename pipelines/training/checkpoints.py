"""Both stages' checkpoints, in one place. A training checkpoint is a directory; everything in it loads without
unpickling arbitrary objects.

    model/              unip2.save(): model.safetensors, config.json, tokenizer.json (unip2.load reads it)
    optimizer.pt        optimizer state (tensors and numbers only: torch.load(weights_only=True))
    train_state.json    next step, counters, loss history (the sampler needs no state: the plan is a
                        pure function of seed and step)
    run_config.yaml     the whole run config (``data.root``: the converted data folder it trained on)

Stage 1's checkpoint (``save_stage1`` / ``load_stage1``) is ``pretrain_state.pt``: the two encoders, their
optimizers and the loop's state, in one file (it never leaves its run: its outputs are the encoders written as
users download them, ``pipelines.stage1.encoders``).

A run's final model folder (``<run>/checkpoint/``, written by ``export_model`` for ``pipelines/train.py``) is
the last checkpoint's ``model/`` with its ``run_config.yaml`` beside it. ``model_folder`` and
``training_data_root`` take either kind, so evaluation accepts both.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model

import unip2
from unip2 import config_io
from unip2.persistence import CONFIG

MODEL, RUN_CONFIG = "model", "run_config.yaml"


def save_checkpoint(directory: str | Path, *, model, optimizer, state: dict, run_config) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unip2.save(model, directory / MODEL)
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "train_state.json").write_text(json.dumps(state))
    config_io.save(run_config, directory / RUN_CONFIG)
    return directory


def load_checkpoint(directory: str | Path, *, model, optimizer) -> dict:
    """Restore weights and optimizer in place; returns the train state."""
    directory = Path(directory)
    load_model(model, str(directory / MODEL / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(directory)


def read_state(directory: str | Path) -> dict:
    """The train state of a checkpoint folder (``train_state.json``): the one reader of it."""
    return json.loads((Path(directory) / "train_state.json").read_text())


STAGE1_STATE = "pretrain_state.pt"


def save_stage1(directory: str | Path, *, model, optimizers: dict, state: dict) -> Path:
    path = Path(directory) / STAGE1_STATE
    torch.save({"model": model.state_dict(), "state": state,
                "optimizers": {task: optimizer.state_dict() for task, optimizer in optimizers.items()}}, path)
    return path


def load_stage1(directory: str | Path, *, model, optimizers: dict, device) -> dict:
    """Restore the encoders and their optimizers in place; returns the loop's state."""
    saved = torch.load(Path(directory) / STAGE1_STATE, map_location=device, weights_only=False)
    model.load_state_dict(saved["model"])
    for task, optimizer in optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][task])
    return saved["state"]


def export_model(checkpoint: str | Path, folder: str | Path) -> Path:
    """Copy the model of a training checkpoint into ``folder`` (replaced), with the run config beside it:
    a ``unip2.load``-able folder that still records the data it was trained on."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(Path(checkpoint) / MODEL, folder)
    shutil.copy2(Path(checkpoint) / RUN_CONFIG, folder / RUN_CONFIG)
    return folder


def model_folder(path: str | Path) -> Path:
    """The ``unip2.save`` folder of ``path``: its ``model/`` when ``path`` is a training checkpoint, else
    ``path`` itself (e.g. a run's ``checkpoint/``; a wrong path is refused by whoever loads it)."""
    path = Path(path)
    if not (path / CONFIG).is_file() and (path / MODEL / CONFIG).is_file():
        return path / MODEL
    return path


def training_data_root(path: str | Path) -> Path:
    """The converted data folder the model at ``path`` (a run's ``checkpoint/``, a training checkpoint or
    its ``model/``) was trained on: ``data.root`` of the run config beside the model, else in the folder
    above it. Raises FileNotFoundError naming what is missing: no run config, no ``data.root`` in it, or
    a data folder that no longer exists."""
    path = Path(path)
    model = model_folder(path)
    if not model.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    candidates = [model / RUN_CONFIG, model.parent / RUN_CONFIG]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{path} records no training data: no {RUN_CONFIG} in {model} or "
                                f"{model.parent}; give the data folder (--data)")
    root = (config_io.read_mapping(found).get("data") or {}).get("root")
    if not root:
        raise FileNotFoundError(f"{path} records no training data: data.root is not set in {found}; "
                                "give the data folder (--data)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{path} was trained on {root} (data.root in {found}), which no longer exists; "
                                "give the data folder (--data)")
    return root
