"""What every training worker's data stream needs, fixed once on the driver (``StreamSpec.of``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from unip2.data.manifest import load_manifest, train_rows
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import RunConfig
from unip2.sampling import TrainingPlan
from unip2.tasks.base import input_options


@dataclass(frozen=True)
class StreamSpec:
    """The run config plus what the driver resolved for it: the data folder, the training rows of each task's
    datasets, the tokenizer (as JSON: the files it came from may not exist on the workers), the worker count the
    plan deals rows to and, after an elastic restart, where every task's stream continues."""

    run: RunConfig
    data_root: str
    num_rows: dict[str, int]
    tokenizer_json: str
    num_workers: int
    anchor: dict | None = None
    """``TrainingPlan.anchor_at`` of the checkpoint an elastic run resumed from, or None."""

    @classmethod
    def of(cls, run: RunConfig, data_root: str | Path) -> "StreamSpec":
        manifest = load_manifest(data_root)
        return cls(run=run, data_root=str(data_root), tokenizer_json=tokenizer_for(run.model.text).to_json(),
                   num_rows={task: train_rows(manifest, run.train_datasets(task)) for task in run.tasks},
                   num_workers=run.scale.num_workers)

    def resized(self, num_workers: int, anchor: dict | None) -> "StreamSpec":
        """The same stream dealt to ``num_workers`` workers, continuing from ``anchor``."""
        return dataclasses.replace(self, num_workers=num_workers, anchor=anchor)

    def plan(self) -> TrainingPlan:
        """The run's plan; a worker's rows of a step are all its micro-batches' (``train.accumulation_steps``)."""
        run = self.run
        accumulation = run.train.accumulation_steps
        return TrainingPlan(tasks=list(run.tasks), ratios=run.ratio_pieces(),
                            batch_sizes={t: task.batch_size * accumulation for t, task in run.tasks.items()},
                            num_rows=self.num_rows, num_workers=self.num_workers, total_steps=run.train.steps,
                            seed=run.train.seed, mode=run.train.sampling, window=run.data.shuffle_window,
                            anchor=self.anchor)

    def inputs(self, task: str) -> dict[str, int]:
        """The keyword options ``task``'s ``preprocess`` takes from the model's input settings."""
        return input_options(self.run.model.task_input_settings(task))
