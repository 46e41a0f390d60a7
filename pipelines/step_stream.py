"""Ray Data stream of ready-to-train step batches, one stream per training worker.

Each worker streams the steps ``start .. total-1``. For every step a Ray Data actor (``StepBatchLoader``,
heavy set-up: Parquet shard readers, tokenizer, the training plan) reads the rows the plan assigns to this
worker (``unip2.sampling.TrainingPlan``), decodes and augments them with the task's ``preprocess``, and
ships the numpy batch. Order is preserved, so a worker always receives step t's batch at step t.

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

from unip2.data.row_reader import RowReader
from unip2.model.tokenizer import TextTokenizer
from unip2.sampling import TrainingPlan
from unip2.tasks import TASKS


def plan_for(spec: dict) -> TrainingPlan:
    """The run's training plan from the plain-dict ``spec`` made by ``stream_spec``."""
    return TrainingPlan(tasks=spec["tasks"], ratios=spec["ratios"], batch_sizes=spec["batch_sizes"],
                        num_rows=spec["num_rows"], num_workers=spec["num_workers"], total_steps=spec["total_steps"],
                        seed=spec["seed"], mode=spec["mode"], window=spec["window"], anchor=spec.get("anchor"))


class StepBatchLoader:
    """Ray Data ``map_batches`` class: {"data": [t]} → {"payload": [pickled numpy batch of step t]}."""

    def __init__(self, spec: dict, rank: int):
        self.spec, self.rank = spec, rank
        self.plan = plan_for(spec)
        self.tokenizer = TextTokenizer.from_json(spec["tokenizer_json"])
        # A task's datasets read as one row space (the plan's num_rows counts them together).
        datasets = spec.get("datasets", {})
        self.readers = {task: RowReader(spec["data_root"], datasets.get(task, TASKS[task].dataset), "train")
                        for task in spec["tasks"]}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = [pickle.dumps(self.load(int(step)), protocol=5) for step in batch["data"]]
        return {"payload": np.array(payloads, dtype=object)}

    def load(self, step: int) -> dict:
        task_name, rows = self.plan.rows_at(step, self.rank)
        task = TASKS[task_name]
        raw = self.readers[task_name].read(rows)
        options = dict(**self.spec["inputs"][task_name], tokenizer=self.tokenizer, train=True)
        rng = np.random.default_rng([self.spec["seed"], 15485863, step, self.rank])
        skipped: Counter = Counter()
        try:
            batch = task.preprocess(raw, rng=rng, **options)
        except ValueError:
            # Some row is bad: keep the good ones, count the rest (the step still trains).
            keep = []
            for index in range(len(rows)):
                try:
                    task.preprocess({k: v[index:index + 1] for k, v in raw.items()}, rng=rng, **options)
                    keep.append(index)
                except ValueError as err:
                    skipped[str(err).split(":")[0]] += 1
            raw = {k: [v[i] for i in keep] for k, v in raw.items()}
            batch = task.preprocess(raw, rng=rng, **options) if keep else None
        return {"step": step, "task": task_name, "batch": batch, "skipped": dict(skipped)}


def stream_steps(spec: dict, *, rank: int, start: int, concurrency: int, num_cpus: float, prefetch: int,
                 steps_per_block: int = 1, window: int = 1000):
    """Iterate ``(step, task, numpy batch | None, skipped)`` for steps start..total-1 of worker ``rank``.

    Steps go through Ray Data in windows of ``window`` steps, ``steps_per_block`` steps per block: one
    loader call decodes a block, so Ray's fixed cost per block is shared by its steps, while a small
    block still hands its batches over soon after they are decoded.
    """
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # the training loop prints its own progress
    for first in range(start, spec["total_steps"], window):
        steps = np.arange(first, min(first + window, spec["total_steps"]), dtype=np.int64)
        # from_items builds its blocks in this process (from_numpy runs a 1-CPU task per block, which
        # waits forever when training workers and loaders hold every CPU of a node). Column "data".
        items = [{"data": int(step)} for step in steps]
        blocks = -(-steps.size // steps_per_block)
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            StepBatchLoader, fn_constructor_kwargs={"spec": spec, "rank": rank}, batch_size=steps_per_block,
            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus)
        for row in dataset.iter_batches(batch_size=1, prefetch_batches=prefetch, batch_format="numpy"):
            item = pickle.loads(row["payload"][0])
            yield item["step"], item["task"], item["batch"], item["skipped"]
