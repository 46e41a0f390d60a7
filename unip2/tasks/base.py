"""The one protocol every task implements: preprocess → collate → loss / predict → postprocess.

A task turns rows of its dataset (the Parquet columns written by ``unip2.data``) into tensors, asks the
shared model for representations, and scores them against its candidates. Tasks hold no parameters:
everything learnable lives in the model, so one model serves every task.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from unip2.config import TaskInputs
from unip2.tasks.preprocessing import object_array

# gather(x) -> (x from every worker concatenated on dim 0, offset of this worker's rows in it).
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def local_gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The single-process gather: nothing to collect."""
    return x, 0


def to_device_function(device: torch.device):
    """numpy array → tensor on ``device``: pinned + non-blocking to CUDA, a plain (zero-copy) view on CPU."""
    if device.type == "cuda":
        return lambda array: torch.as_tensor(array).pin_memory().to(device, non_blocking=True)
    return lambda array: torch.as_tensor(array).to(device)


class Task:
    """Base class of the five tasks; subclasses override the methods that differ."""

    name: str = ""
    dataset: str = ""
    """Dataset (in the converter's manifest) the task reads."""
    label_space: str | None = None
    """Key of ``ModelConfig.class_names`` whose names are the task's candidates, if any."""
    metric: str = ""
    """Headline validation metric (a key of the task's metrics), e.g. for Tune objectives."""
    zero_shot_splits: tuple[tuple[str, str], ...] = ()
    """(dataset, split) pairs the task is also evaluated on, zero-shot: data no run trains on, with the
    same rows format as ``dataset`` (e.g. retrieval on the Flickr30k test split, paper Table 6)."""

    # ------------------------------------------------------------------------- data (CPU, numpy)
    def preprocess(self, batch: dict[str, np.ndarray], *, image_size: int, tokenizer: Any,
                   train: bool, rng: np.random.Generator, max_text_length: int = 32) -> dict[str, np.ndarray]:
        """Decode and augment a batch of dataset rows → fixed-size numpy arrays (+ ragged object arrays).

        Only ``image`` (encoded bytes) is required; annotation columns (labels, boxes, captions) are
        used when present, so served requests go through the same code.
        """
        raise NotImplementedError

    def collate(self, batch: dict[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, Any]:
        """Numpy batch from ``preprocess`` → tensors on ``device`` (ragged fields → lists of tensors).

        To a GPU, arrays go through pinned host memory with non-blocking copies, so the copy overlaps
        the host work that follows."""
        out: dict[str, Any] = {}
        move = to_device_function(torch.device(device))
        for key, value in batch.items():
            value = np.asarray(value) if not isinstance(value, np.ndarray) else value
            if value.dtype == object:
                out[key] = [move(v) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else
                            (list(v) if isinstance(v, np.ndarray) else v) for v in value]
            elif value.dtype.kind in "biuf":
                out[key] = move(value)
            else:
                out[key] = list(value)
        return out

    # -------------------------------------------------------------------------- model (torch)
    def loss(self, model, batch: dict[str, Any], *, gather: Gather = local_gather) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms (scalars)."""
        raise NotImplementedError

    def loss_weights(self, model) -> dict[str, float]:
        """The weight of every term ``loss`` returns; applied in exactly one place (``total_loss``)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model, batch: dict[str, Any], **options: Any) -> list[dict]:
        """Predictions for a collated batch, one dict per row in the task's standard format."""
        raise NotImplementedError

    def class_names(self, model, override: list[str] | None = None) -> list[str]:
        """Candidate names: the override (open vocabulary) or the checkpoint's defaults."""
        if override is not None:
            if not override:
                raise ValueError("class_names must not be empty")
            return list(override)
        if self.label_space not in model.config.class_names:
            raise ValueError(f"class_names.{self.label_space}: the model config has no names for the "
                             f"{self.name} task; give class names")
        return model.config.class_names[self.label_space]


def input_options(settings: TaskInputs) -> dict[str, int]:
    """A task's input settings (``ModelConfig.task_input_settings``) → the keyword options of its
    ``preprocess`` they set. The pixel normalization is not one of them: the model applies it."""
    return {"image_size": settings.image_size, "max_text_length": settings.max_text_length}


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight × term, the one place loss weights are applied. Every term needs a weight."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise KeyError(f"no weight for loss terms {missing}")
    return sum(weights[name] * value for name, value in terms.items())


def image_ids(batch: dict) -> np.ndarray:
    """The rows' ``image_id`` column, or 0..B-1 for unannotated inputs (e.g. a served request)."""
    if "image_id" in batch:
        return np.asarray(batch["image_id"], dtype=np.int64)
    return np.arange(len(batch["image"]), dtype=np.int64)


def image_batch(images: np.ndarray) -> np.ndarray:
    """Stack B×S×S×3 uint8 images into the model's B×3×S×S layout."""
    return np.ascontiguousarray(np.stack(list(images)).transpose(0, 3, 1, 2))


__all__ = ["Gather", "Task", "image_batch", "image_ids", "input_options", "local_gather", "object_array", "total_loss"]
