"""Train → Tune: every Train report forwarded to the trial's Tune session with ``progress`` (ASHA's metric)
and ``train_report`` (ASHA's time).

Ray Train runs its callbacks in the controller actor it starts for every ``fit``, and that process imports
the module defining them before it can start the workers. So this module stays light: Ray Tune and
``tune.objective`` only. Kept in ``tune.trial``, the callback made each trial's controller import the model
and evaluation code too (~3 s more of controller start per trial on 2 cores, measured with
``tune.trial_timeline``).
"""

from __future__ import annotations

import math

from ray.tune.integration.ray_train import TuneReportCallback

from tune.objective import PROGRESS, loss_progress
from tune.trial_stop import StopWatcher

TRAIN_REPORT = "train_report"
"""Result key: the number of this Train report in the run, ``ceil(step / checkpoint_every)`` (1, 2, ...): the
same after a resume, unlike Tune's ``training_iteration``, which a resumed trial counts from 1 again."""


class ProgressReport(TuneReportCallback):
    """Forwards every Train report to Tune, adding ``progress`` = the loss ratio to the baseline at that step
    and its ``train_report`` number (``checkpoint_every``: the run's ``train.checkpoint_every``). ``stop_file``:
    from its first report on, the run ends itself once this file exists (``tune.trial_stop``: the trial's actor is
    handed to the next trial)."""

    def __init__(self, reference: dict[int, dict[str, float]], checkpoint_every: int, stop_file: str | None = None):
        super().__init__()
        self.reference = reference
        self.checkpoint_every = checkpoint_every
        self.stop_file = stop_file
        self._watcher = None  # started in the controller, where this object runs

    def after_report(self, run_context, metrics, checkpoint):
        if self.stop_file is not None and self._watcher is None:
            self._watcher = StopWatcher(self.stop_file).start()
        if checkpoint is None:  # a live-metrics report between checkpoints: Tune's results stay one per checkpoint
            return
        first = dict(metrics[0])
        first[PROGRESS] = step_progress(first, self.reference)
        first[TRAIN_REPORT] = math.ceil(int(first["step"]) / self.checkpoint_every)
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


def step_progress(losses: dict, reference: dict[int, dict[str, float]]) -> float:
    """``progress`` of a report {"step", "loss/<task>", ...}; NaN (never stopped on) when no task compares.
    Every result carries it: Tune refuses results without the scheduler's metric."""
    shared = reference.get(int(losses.get("step", -1)), {})
    progress = loss_progress({k: v for k, v in losses.items() if k.startswith("loss/")}, shared)
    return math.nan if progress is None else progress
