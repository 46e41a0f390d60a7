"""Ray Data stream of ready-to-train step batches, one stream per training worker.

Each worker streams the steps ``start .. total-1``. For every step a Ray Data actor (``StepBatchLoader``,
heavy set-up: Parquet shard readers, tokenizer, the training plan) reads the rows the plan assigns to this
worker (``unip2.sampling.TrainingPlan``), decodes and augments them with the task's ``preprocess``, and
ships the numpy batch, split into ``train.accumulation_steps`` micro-batches (the plan deals A × batch_size rows
per worker and step; micro-batch i holds the i-th consecutive part). Order is preserved, so a worker always
receives step t's batches at step t.

Why not ``streaming_split`` over one dataset per task: workers would share split iterators in lock-step,
and the sample order could not be replayed exactly after a failure. Here every worker's stream is
independent (no cross-worker blocking, mixed mode works too) and a pure function of (seed, step, rank),
so resuming at step t repeats nothing and skips nothing.
"""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import ray

from pipelines.data.stream_spec import StreamSpec
from unip2.data.row_reader import RowReader
from unip2.model.tokenizer import TextTokenizer
from unip2.training_setup import TEXT_LENGTH_MULTIPLE
from unip2.tasks import TASKS
from unip2.tasks.preprocessing import UndecodableImage


class StepBatchLoader:
    """Ray Data ``map_batches`` class: {"data": [t]} → {"payload": [pickled micro-batches of step t]}."""

    def __init__(self, spec: StreamSpec, rank: int):
        self.spec, self.rank = spec, rank
        self.plan = spec.plan()
        self.tokenizer = TextTokenizer.from_json(spec.tokenizer_json)
        if spec.run.train.compile:  # a few text lengths, so the compiled modules see a bounded set of shapes
            self.tokenizer.pad_to_multiple_of = TEXT_LENGTH_MULTIPLE
        # A task's datasets read as one row space (the plan's num_rows counts them together).
        self.readers = {task: RowReader(spec.data_root, spec.run.train_datasets(task), "train")
                        for task in spec.run.tasks}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # One pickle per step (protocol 5: the arrays' buffers copied as they are); Ray Data stores a column of
        # bytes as an Arrow binary column, so the payload is not pickled a second time on its way.
        payloads = [pickle.dumps(self.load(int(step)), protocol=5) for step in batch["data"]]
        return {"payload": np.array(payloads, dtype=object)}

    def load(self, step: int) -> dict:
        """{"step", "task", "batches": [numpy batch, or None when none of its rows decodes] × accumulation_steps,
        "skipped": {reason: rows}} of this worker at ``step``."""
        task_name, rows = self.plan.rows_at(step, self.rank)
        task = TASKS[task_name]
        options = dict(**self.spec.inputs(task_name), tokenizer=self.tokenizer, train=True)
        rng = np.random.default_rng([self.spec.run.train.seed, 15485863, step, self.rank])
        batches, skipped = [], Counter()
        for part in np.array_split(rows, self.spec.run.train.accumulation_steps):
            raw = self.readers[task_name].read(part)
            # A bad image drops its row (counted); the step trains on the others.
            batch, _, dropped = task.preprocess_decodable(raw, rng=rng, **options)
            batches.append(batch)
            skipped.update(UndecodableImage.reason for _ in dropped)
        return {"step": step, "task": task_name, "batches": batches, "skipped": dict(skipped)}


def stream_steps(spec: StreamSpec, *, rank: int, start: int, concurrency: int, num_cpus: float, prefetch: int,
                 steps_per_block: int = 1, window: int = 100_000):
    """Iterate ``(step, task, [numpy micro-batch | None], skipped)`` for steps start..total-1 of worker ``rank``.

    Steps go through Ray Data in windows of ``window`` steps (each window is one dataset, whose loader actors
    start when it does: a few seconds without batches, so windows are long: every shipped recipe's run is one
    window but the paper's, which starts a pool once per 100,000 steps), ``steps_per_block`` steps per block: one
    loader call decodes a block, so Ray's fixed cost per block is shared by its steps, while a small
    block still hands its batches over soon after they are decoded.
    """
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the training loop prints its own progress
    total = spec.run.train.steps
    for first in range(start, total, window):
        steps = np.arange(first, min(first + window, total), dtype=np.int64)
        # from_items builds its blocks in this process (from_numpy runs a 1-CPU task per block, which
        # waits forever when training workers and loaders hold every CPU of a node). Column "data".
        items = [{"data": int(step)} for step in steps]
        blocks = -(-steps.size // steps_per_block)
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            StepBatchLoader, fn_constructor_kwargs={"spec": spec, "rank": rank}, batch_size=steps_per_block,
            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus)
        for row in dataset.iter_batches(batch_size=1, prefetch_batches=prefetch, batch_format="numpy"):
            item = pickle.loads(row["payload"][0])
            yield item["step"], item["task"], item["batches"], item["skipped"]
