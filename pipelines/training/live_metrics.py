"""Live metrics of a run: every progress window (``train.log_every`` steps) each stage reports its losses,
learning rate, speed and counters through Ray Train, and this Ray Train callback writes rank 0's report as
TensorBoard scalars into the run folder (``tensorboard --logdir runs/``). It runs in the run's Train controller,
on the head node beside the driver, so it stays light: tensorboardX only (Ray's own dependency)."""

from __future__ import annotations

import math
from pathlib import Path

import ray.train

TENSORBOARD = "tensorboard"
"""The event files' folder in a stage's run folder."""


class TensorBoardLog(ray.train.UserCallback):
    """Every Train report's numbers (rank 0's) as scalars at their ``step``, in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = str(folder)
        self._writer = None  # made in the controller, where this object runs

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            write_scalars(self._open(), metrics[0])

    def _open(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.folder, flush_secs=10)
        return self._writer


def write_scalars(writer, values: dict, step: int | None = None, prefix: str = "") -> None:
    """The finite numbers of ``values`` (its ``step`` unless given) as scalars, flushed."""
    step = int(values.get("step", 0)) if step is None else step
    for key, value in values.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(prefix + key, value, step)
    writer.flush()


def write_evaluation(folder: str | Path, metrics: dict, step: int) -> None:
    """The evaluation's numbers at the run's last step: ``eval/<task>/<metric>``."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(folder), filename_suffix=".evaluation") as writer:  # never the live file's name
        for task, values in metrics.items():
            if isinstance(values, dict):
                write_scalars(writer, values, step, prefix=f"eval/{task}/")
