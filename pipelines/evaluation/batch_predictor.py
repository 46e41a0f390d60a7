"""The ``map_batches`` side of batch evaluation: rows of several datasets in one stream, one loaded
checkpoint per actor, each row predicted by every task reading its dataset.

Input rows (``row_schema()``, made by ``to_row_schema`` from each dataset's Parquet columns): ``dataset``,
``image``, ``image_id``, and every registered task's ``eval_columns`` (the annotations its prediction and
metric read, e.g. ``label``, ``captions``), null where a dataset has none.

Output rows keep ``dataset``, ``image_id`` and the annotation columns (each value as JSON) and add, for
every task, two plain columns, null for rows of other datasets, so ragged predictions never meet
Arrow's type inference and every batch has the same schema:

- ``<task>``: utf-8 JSON of the prediction's plain fields, or ``{"image_id", "skipped": reason}`` when
  the row's image could not be decoded;
- ``<task>:arrays``: the prediction's numpy fields (e.g. retrieval's ``image_embedding`` D and
  ``text_embeddings`` N×D) as ``.npz`` bytes.

``decode_predictions`` turns gathered output rows back into prediction dicts.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa


def annotation_columns() -> dict[str, pa.DataType]:
    """Every registered task's ``eval_columns`` with its Arrow type (from the task's dataset schema)."""
    from unip2.tasks import TASKS, dataset_schema

    columns: dict[str, pa.DataType] = {}
    for task in TASKS.values():
        for name in task.eval_columns:
            columns.setdefault(name, dataset_schema(task.dataset).field(name).type)
    return columns


def row_schema() -> pa.Schema:
    return pa.schema([pa.field("dataset", pa.string()), pa.field("image", pa.binary()),
                      pa.field("image_id", pa.int64()),
                      *(pa.field(name, kind) for name, kind in annotation_columns().items())])


def to_row_schema(batch: pa.Table, dataset: str) -> pa.Table:
    """One dataset's Parquet rows (``image``, ``image_id`` and any annotation columns) → ``row_schema()``."""
    schema = row_schema()
    columns = {"dataset": pa.array([dataset] * batch.num_rows, pa.string())}
    for field in schema:
        if field.name in batch.column_names:
            columns[field.name] = batch.column(field.name).cast(field.type)
        elif field.name != "dataset":
            columns[field.name] = pa.nulls(batch.num_rows, field.type)
    return pa.table(columns, schema=schema)


class BatchPredictor:
    """Predictions for batches of ``row_schema()`` rows.

    Args:
        checkpoint_dir: a directory written by ``unip2.save``, or a model in memory (predicted in the mode it is
            in: the caller puts it in eval mode).
        tasks_by_dataset: {dataset: names of the ``unip2.tasks.TASKS`` that read it}.
        columns_by_dataset: {dataset: the annotation columns it has} (passed to ``preprocess``).
        options: {task name: keyword options of that task's ``predict``} (e.g. ``class_names``).
        precision: ``auto`` | ``bf16`` | ``fp32``, as ``train.precision`` (``unip2.precision``).
    """

    def __init__(self, checkpoint_dir, tasks_by_dataset: dict[str, list[str]],
                 columns_by_dataset: dict[str, list[str]], options: dict[str, dict[str, Any]],
                 precision: str = "auto"):
        import torch

        import unip2
        from unip2.precision import resolve_precision
        from unip2.tasks import TASKS

        if isinstance(checkpoint_dir, torch.nn.Module):  # a model in memory (the validations during training)
            self.model = checkpoint_dir
            self.device = str(self.model.pixel_mean.device)
        else:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = unip2.load(checkpoint_dir, device=self.device).eval()
        self.precision = resolve_precision(precision, torch.device(self.device), field="precision")
        self.tasks = {dataset: [TASKS[name] for name in names] for dataset, names in tasks_by_dataset.items()}
        self.columns = columns_by_dataset
        self.options = options

    def __call__(self, batch: pa.Table) -> pa.Table:
        datasets = batch.column("dataset").to_pylist()
        text: dict[str, list] = {t.name: [None] * batch.num_rows for tasks in self.tasks.values() for t in tasks}
        arrays: dict[str, list] = {name: [None] * batch.num_rows for name in text}
        for dataset, tasks in self.tasks.items():
            positions = [i for i, d in enumerate(datasets) if d == dataset]
            if not positions:
                continue
            part = batch.take(pa.array(positions))
            rows = {name: part.column(name).to_pylist()
                    for name in ("image", "image_id", *self.columns.get(dataset, ()))}
            for task in tasks:
                for position, prediction in zip(positions, self.predict_rows(task, rows)):
                    numeric = {k: v for k, v in prediction.items() if isinstance(v, np.ndarray)}
                    plain = {k: v for k, v in prediction.items() if k not in numeric}
                    text[task.name][position] = json.dumps(plain, default=_plain)
                    arrays[task.name][position] = _npz_bytes(numeric) if numeric else None
        columns = {"dataset": batch.column("dataset"), "image_id": batch.column("image_id")}
        for name in annotation_columns():
            values = batch.column(name).to_pylist()
            columns[name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        for name in text:
            columns[name] = pa.array(text[name], pa.string())
            columns[f"{name}:arrays"] = pa.array(arrays[name], pa.binary())
        return pa.table(columns)

    def predict_rows(self, task, rows: dict[str, list]) -> list[dict]:
        """One prediction per row, in row order; rows whose image does not decode get ``skipped``."""
        from unip2.tasks.base import input_options

        arrays, good, reasons = task.preprocess_decodable(
            rows, **input_options(self.model.config.task_input_settings(task.name)), tokenizer=self.model.tokenizer,
            train=False, rng=np.random.default_rng(0))
        from unip2.precision import autocast

        predictions = []
        if arrays is not None:
            with autocast(self.precision, self.model.pixel_mean.device):
                predictions = task.predict(self.model, task.collate(arrays, device=self.device),
                                           **self.options.get(task.name, {}))
        by_row = dict(zip(good, predictions))
        return [by_row[i] if i in by_row else {"image_id": int(rows["image_id"][i]), "skipped": reasons[i]}
                for i in range(len(rows["image"]))]


def decode_predictions(table: pa.Table, task_name: str) -> list[dict]:
    """Output rows of ``BatchPredictor`` (of the task's dataset) → that task's prediction dicts."""
    predictions = []
    for text, data in zip(table.column(task_name).to_pylist(), table.column(f"{task_name}:arrays").to_pylist()):
        prediction = json.loads(text)
        if data:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                prediction |= {key: stored[key] for key in stored.files}
        predictions.append(prediction)
    return predictions


def _plain(value: Any) -> Any:
    """JSON fallback for numpy / torch scalars inside a prediction."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
