"""The one protocol every task implements: preprocess → collate → loss / predict → evaluate, and everything
else about the task, declared in its file: its options (saved with the model), data source and annotation
columns, metric, candidate family and Serve routes.

A task turns rows of its dataset (the Parquet columns written by ``unip2.data``) into tensors, asks the
shared model for representations, and scores them against its candidates. Tasks hold no parameters:
everything learnable lives in the model, so one model serves every task. Training, evaluation, Serve, Tune
and the benchmarks iterate the registry (``unip2.tasks.TASKS``): adding a task is adding a file and a
registry line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch

from unip2.config import TaskInputs, TaskOptions
from unip2.data.task_datasets import SourceRows
from unip2.eval.chance import ChanceData
from unip2.tasks.headlines import Headline
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.preprocessing import UndecodableImage, object_array
from unip2.tasks.routes import Route, ServeContext, ServeRequest, jsonable, stack_rows

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
    """Base class of the tasks; subclasses declare their attributes and override the methods that differ."""

    name: str = ""
    dataset: str = ""
    """Dataset (in the converter's manifest) the task reads by default (``tasks.<task>.datasets`` of a run may
    list others of the same columns)."""
    dataset_schema: Any = None
    """The Arrow schema of ``dataset`` when it is the task's own (read from its source by ``read_source``); None
    for a built-in source (``unip2.data.parquet_schema.SCHEMAS``)."""
    eval_columns: tuple[str, ...] = ()
    """Annotation columns of the dataset that prediction and ``evaluate`` read besides the image."""
    label_space: str | None = None
    """Key of ``ModelConfig.class_names`` whose names are the task's candidates, if any."""
    candidate_family: str = "category"
    """Score family (one learnable temperature per family, shared by the tasks that name it)."""
    metric: str = ""
    """Headline validation metric (a key of the task's metrics), e.g. for Tune objectives."""
    headlines: tuple[Headline, ...] = ()
    """The metrics reports show (``headline_metrics``): their labels, the paper's Table 6 columns they fill, the
    default run's goals."""
    Options: type[TaskOptions] = TaskOptions
    """The task's options dataclass, one instance per task in ``ModelConfig.tasks`` (saved with the model)."""
    routes: tuple[Route, ...] = ()
    """The task's Serve endpoints."""
    preset_options: dict[str, dict[str, Any]] = {}
    """Option values a model preset sets for this task, by preset name (the tiny model's shorter captions)."""
    legacy_options: dict[str, str] = {}
    """Keys of the flat ``tasks`` section of checkpoints saved before each task's options had a file of their own
    → this task's field (``unip2.persistence`` upgrades them)."""
    with_masks: bool = False
    """The task's loss and predictions read the proposals' masks (in training, every decoder layer's)."""
    pretrains: str | None = None
    """The encoder stage 1 pretrains alone on this task's training data (``image`` or ``text``), with
    ``pretrain_loss``; None: the task has no part in stage 1."""
    zero_shot_splits: tuple[tuple[str, str], ...] = ()
    """(dataset, split) pairs the task is also evaluated on, zero-shot: data no run trains on, with the
    same rows format as ``dataset`` (e.g. retrieval on the Flickr30k test split, paper Table 6)."""

    def chance_levels(self, data: ChanceData) -> dict[str, float]:
        """Metric → its chance level on ``data`` (``unip2.eval.chance``: what answering each evaluated example with
        a random training example's annotations scores); {} where the task has none or the data lacks the split."""
        return {}

    def candidate_count(self, model) -> int:
        """How many candidates a step of this task scores against: its label space's names (0 without one, e.g.
        retrieval's candidates are the batch's own)."""
        return len(model.config.class_names.get(self.label_space, [])) if self.label_space else 0

    def headline_metrics(self) -> tuple[Headline, ...]:
        """``headlines``, else the task's ``metric`` alone."""
        return self.headlines or (Headline(self.metric, f"{self.name} {self.metric}"),)

    # ------------------------------------------------------------------------- data (CPU, numpy)
    def preprocess(self, batch: dict[str, np.ndarray], *, image_size: int, tokenizer: Any,
                   train: bool, rng: np.random.Generator, max_text_length: int = 32) -> dict[str, np.ndarray]:
        """Decode and augment a batch of dataset rows → fixed-size numpy arrays (+ ragged object arrays).

        Only ``image`` (encoded bytes) is required; annotation columns (labels, boxes, captions) are
        used when present, so served requests go through the same code.
        """
        raise NotImplementedError

    def preprocess_decodable(self, rows: dict[str, list], **options: Any) -> tuple[dict | None, list[int], dict]:
        """``preprocess`` of the rows whose images decode — the one rule training and evaluation skip bad images
        by → (batch of the kept rows or None, kept row indices, {skipped row index: reason})."""
        count = len(rows["image"])
        try:
            return self.preprocess(rows, **options), list(range(count)), {}
        except UndecodableImage:
            keep, reasons = [], {}
            for index in range(count):
                try:
                    self.preprocess({k: v[index:index + 1] for k, v in rows.items()}, **options)
                    keep.append(index)
                except UndecodableImage as err:
                    reasons[index] = str(err)
            kept = {k: [v[i] for i in keep] for k, v in rows.items()}
            return (self.preprocess(kept, **options) if keep else None), keep, reasons

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

    def read_source(self, source) -> SourceRows:
        """The task's own dataset in its source format (a file or folder) → rows of ``dataset_schema`` per split,
        and its label spaces' names (``pipelines/prepare_data.py --task-data TASK SOURCE``)."""
        raise NotImplementedError(f"the {self.name} task reads the built-in {self.dataset!r} dataset; its source "
                                  f"is converted by pipelines/prepare_data.py's own options")

    def fill_options(self, options: TaskOptions, *, data_root, datasets: list[str], train_rows: int,
                     tokenizer) -> None:
        """Fill, in place, the options a training run derives from its data before it starts (``datasets``' train
        splits in the converted folder ``data_root``, ``train_rows`` rows in all). Nothing by default."""

    def check(self, model) -> None:
        """Refuse options that do not fit the model built (raise ValueError naming the field). Nothing by default."""

    def options(self, model) -> TaskOptions:
        """This task's options in ``model``'s config (its defaults when the config records none)."""
        return model.config.task_options(self.name)

    # -------------------------------------------------------------------------- model (torch)
    def pretrain_loss(self, encoders, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: the loss of the encoder ``pretrains`` names, alone, on a collated batch → (mean loss, right
        predictions, predictions), the counts as 0-d tensors. ``encoders``: ``unip2.pretraining.EncoderPretraining``
        (its ``image`` classifier, its ``text`` masked language model)."""
        raise NotImplementedError(f"the {self.name} task has no stage-1 objective")

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

    def prediction_files(self, answers: list[dict], files: list[str], out) -> dict[str, Any]:
        """Files of the field's formats for answers to images outside any dataset (``pipelines/predict.py``):
        ``answers[i]`` is the route's answer for ``files[i]``; images are numbered by their position → {kind:
        path written}. Nothing by default (``predictions.jsonl`` holds every answer)."""
        return {}

    # ------------------------------------------------------------------------------- serving
    @torch.no_grad()
    def answer_predict(self, model, requests: list[ServeRequest], context: ServeContext) -> list:
        """One preprocessed image per request through ``predict``; requests with the same parameters share a
        forward pass. → one prediction per request (JSON-ready, without ``image_id``), or its exception."""
        results: list = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.params, sort_keys=True)].append(index)
        device = model.pixel_mean.device
        for options, indices in groups.items():
            try:
                batch = self.collate(stack_rows([requests[i].rows for i in indices]), device=device)
                for index, prediction in zip(indices, self.predict(model, batch, **json.loads(options))):
                    prediction.pop("image_id", None)
                    results[index] = jsonable(prediction)
            except Exception as err:  # one group's failure must not take the other groups' requests down
                for index in indices:
                    results[index] = err
        return results

    # ---------------------------------------------------------------------------- evaluation
    def missing_evaluation_data(self, manifest: dict, dataset: str, split: str) -> str | None:
        """Why this task cannot be evaluated on ``split`` of ``dataset`` in a data folder's manifest, or None."""
        splits = manifest["datasets"].get(dataset, {}).get("splits", {})
        if split not in splits:
            return f"no {dataset}/{split} in the data (present: {sorted(splits) or 'none'})"
        if not splits[split].get("rows"):
            return f"{dataset}/{split} has no rows"
        if self.label_space is not None and self.label_space not in manifest.get("class_names", {}):
            return f"the data has no class names for label space {self.label_space!r}"
        return None

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        """Metrics of the predictions over a split → (JSON-ready metrics holding ``metric``, {kind: path} of the
        result files written into ``context.out_dir``)."""
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
