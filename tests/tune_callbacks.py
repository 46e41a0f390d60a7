"""Tune callbacks the tests pass to the sweep and PBT command lines."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import ray.tune


class InterruptOnFirstResult(ray.tune.Callback):
    """Interrupts the run once, at the first result any trial reports (SIGUSR1, Tune's graceful stop, like
    Ctrl+C; the marker file makes it once: the callback is saved with the experiment and comes back on resume)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not Path(self.marker).exists():
            Path(self.marker).write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)
