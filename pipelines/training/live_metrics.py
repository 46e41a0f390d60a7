"""Live metrics of a run: every progress window (``train.log_every`` steps) each stage reports its losses,
learning rate, speed and counters through Ray Train, and this Ray Train callback writes rank 0's report as
TensorBoard scalars into the run folder (``tensorboard --logdir runs/``). It runs in the run's Train controller,
on the head node beside the driver, so it stays light: tensorboardX's event records only (Ray's own dependency)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import ray.train

TENSORBOARD = "tensorboard"
"""The event files' folder in a stage's run folder."""


class EventFile:
    """One TensorBoard event file written synchronously: a report's scalars are on disk when ``add`` returns.
    (tensorboardX's ``SummaryWriter`` queues events to a thread, and its ``flush`` does not wait for that queue:
    the run's last report could still be in memory when the run ends.)"""

    def __init__(self, folder: str | Path, suffix: str = ""):
        from tensorboardX.event_file_writer import EventsWriter

        Path(folder).mkdir(parents=True, exist_ok=True)
        self._events = EventsWriter(str(Path(folder) / "events"), suffix)

    def add(self, values: dict, step: int, prefix: str = "") -> None:
        """The finite numbers of ``values`` (a ``step`` key is not one of them) as scalars at ``step``."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self._events.write_event(Event(summary=scalar(prefix + key, float(value)), step=step,
                                               wall_time=time.time()))
        self._events.flush()

    def close(self) -> None:
        self._events.close()


class TensorBoardLog(ray.train.UserCallback):
    """Every Train report's numbers (rank 0's) as scalars at their ``step``, in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = str(folder)
        self._file = None  # made in the controller, where this object runs

    def after_report(self, run_context, metrics, checkpoint):
        if metrics:
            if self._file is None:
                self._file = EventFile(self.folder)
            self._file.add(metrics[0], int(metrics[0].get("step", 0)))


def write_evaluation(folder: str | Path, metrics: dict, step: int) -> None:
    """The evaluation's numbers at the run's last step: ``eval/<task>/<metric>``."""
    events = EventFile(folder, suffix=".evaluation")  # never the live file's name
    for task, values in metrics.items():
        if isinstance(values, dict):
            events.add(values, step, prefix=f"eval/{task}/")
    events.close()
