"""A training checkpoint is a directory; everything in it loads without unpickling arbitrary objects.

    model/              unip2.save(): model.safetensors, config.json, tokenizer.json (unip2.load reads it)
    optimizer.pt        optimizer state (tensors and numbers only: torch.load(weights_only=True))
    train_state.json    next step, counters, loss history (the sampler needs no state: the plan is a
                        pure function of seed and step)
    run_config.yaml     the whole run config
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model

import unip2
from unip2 import config_io


def save_checkpoint(directory: str | Path, *, model, optimizer, state: dict, run_config) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unip2.save(model, directory / "model")
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "train_state.json").write_text(json.dumps(state))
    config_io.save(run_config, directory / "run_config.yaml")
    return directory


def load_checkpoint(directory: str | Path, *, model, optimizer) -> dict:
    """Restore weights and optimizer in place; returns the train state."""
    directory = Path(directory)
    load_model(model, str(directory / "model" / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(directory)


def read_state(directory: str | Path) -> dict:
    """The train state of a checkpoint folder (``train_state.json``): the one reader of it."""
    return json.loads((Path(directory) / "train_state.json").read_text())
