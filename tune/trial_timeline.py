"""Where a sweep trial's time goes: timestamps from the three processes that see it, merged into phases.

- The trial itself (``TrialClock``, in the trial actor): when its module was imported, when the trial
  function started, its run was prepared, the TorchTrainer built, ``fit`` returned, the checkpoint read,
  the evaluation done, the last result sent. Written to ``<run folder>/timeline.json``.
- Ray Train's own log (``train_log_marks``): its controller's and worker's JSON log lines
  (``<session>/logs/train/ray-train-sys-*.log``, one ``run_name`` per trial) — controller start, worker
  actors created, train context initialized, worker group started, first step on the worker, the worker
  group shut down.
- The Tune driver (``DriverTimeline``, a Tune callback): when the Tuner loop started, when Tune first saw
  each trial, when the trial's actor had started, each result arrived, the trial completed.

``phase_rows`` turns one trial's marks into consecutive phases (seconds); ``benchmarks/tune_overhead.py``
prints them for every trial of its sweep. All clocks are ``time.time()`` on the same machine (local Ray).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray.tune

TIMELINE = "timeline.json"
"""A trial's marks, in its run folder."""


class TrialClock:
    """Named timestamps of one trial, in the order they happen; once ``keep_in`` names the run folder, every
    mark is written there at once (a trial stopped early keeps the marks it reached)."""

    def __init__(self, **marks: float):
        self.marks: dict[str, float] = dict(marks)
        self.folder: Path | None = None

    def keep_in(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._write()

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()
        self._write()

    def _write(self) -> None:
        if self.folder is not None:
            (self.folder / TIMELINE).write_text(json.dumps(self.marks, indent=1))


def process_started() -> float:
    """When this process started (a pooled Ray worker may be much older than the actor it hosts)."""
    import psutil

    return psutil.Process(os.getpid()).create_time()


class DriverTimeline(ray.tune.Callback):
    """Tune callback: per trial id, when the driver first saw the trial, when its actor had started, its
    first and last result arrived and it completed; ``loop_started`` = the Tuner loop's setup."""

    def __init__(self):
        self.loop_started: float | None = None
        self.loop_ended: float | None = None
        self.trials: dict[str, dict[str, float]] = {}

    def _mark(self, trial, name: str, *, keep_first: bool = True) -> None:
        marks = self.trials.setdefault(trial.trial_id, {})
        if not (keep_first and name in marks):
            marks[name] = time.time()

    def setup(self, **info):
        self.loop_started = time.time()

    def on_step_begin(self, iteration, trials, **info):
        for trial in trials:
            self._mark(trial, "driver_saw_trial")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._mark(trial, "actor_started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._mark(trial, "first_result")
        self._mark(trial, "last_result", keep_first=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._mark(trial, "trial_complete")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._mark(trial, "trial_complete")

    def on_experiment_end(self, trials, **info):
        self.loop_ended = time.time()


TRAIN_EVENTS = {
    # controller (first line of its __init__ = the controller actor is up and constructing)
    "Requesting resources": "train_controller_init",
    "Attempting to start training worker group": "train_group_start",
    "worker actors created": "train_workers_created",
    "Train context initialized on workers": "train_context_ready",
    "Worker group startup completed": "train_group_ready",
    # worker
    "Launching training function": "train_fn_launched",
    "Moving model to device": "train_model_built",
    "Checkpoint successfully created": "train_last_checkpoint",
    # controller, at the end
    "Shutting down": "train_shutdown_start",
    "Worker group shutdown successful": "train_shutdown_done",
}
"""Substring of a Ray Train (2.60) log message → mark name (the last line wins for the checkpoint)."""


def train_log_marks(run_name: str, session_dir: str | Path | None = None) -> dict[str, float]:
    """Ray Train's marks for the TorchTrainer run ``run_name`` (a trial's run folder name), read from the
    session's Train logs; {} when they are not on this machine."""
    if session_dir is None:
        session_dir = ray._private.worker._global_node.get_session_dir_path()
    marks: dict[str, float] = {}
    for path in sorted((Path(session_dir) / "logs" / "train").glob("ray-train-sys-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("run_name") != run_name:
                continue
            for needle, name in TRAIN_EVENTS.items():
                if needle in entry.get("message", ""):
                    seconds = entry["timestamp_ns"] / 1e9
                    if name == "train_last_checkpoint" or name not in marks:
                        marks[name] = seconds
    return marks


PHASES = [
    # (phase, from mark, to mark): consecutive where all marks exist
    ("Tune: trial queued → placement group, worker process, actor init", "driver_saw_trial", "module_import_start"),
    ("trial actor: import tune.trial (torch, Ray Train, project modules)", "module_import_start", "module_imported"),
    ("Tune: actor ready → trial function called", "module_imported", "function_start"),
    ("trial: run config + folder (prepare_run)", "function_start", "prepared"),
    ("trial: TorchTrainer built (data manifest, tokenizer, stream spec)", "prepared", "trainer_built"),
    ("Train: controller actor start", "trainer_built", "train_controller_init"),
    ("Train: controller setup → worker group start", "train_controller_init", "train_group_start"),
    ("Train: worker actors created", "train_group_start", "train_workers_created"),
    ("Train: train context on workers (process group, imports)", "train_workers_created", "train_context_ready"),
    ("Train: worker group callbacks, train fn launched", "train_context_ready", "train_fn_launched"),
    ("worker: config, model built", "train_fn_launched", "train_model_built"),
    ("worker: training steps + checkpoints", "train_model_built", "train_last_checkpoint"),
    ("Train: last report → worker group shut down", "train_last_checkpoint", "train_shutdown_done"),
    ("Train: controller teardown → fit() returns", "train_shutdown_done", "fit_returned"),
    ("trial: checkpoint opened, state read", "fit_returned", "checkpoint_opened"),
    ("evaluation (predictions in the trial, Ray Data with GPUs; metrics)", "checkpoint_opened", "evaluated"),
    ("trial: final report sent", "evaluated", "reported"),
    ("Tune: final result → driver", "reported", "last_result"),
    ("Tune: trial completion, actor stop", "last_result", "trial_complete"),
]


REUSED_ACTOR_PHASE = ("Tune: trial queued → earlier trial's actor reset, trial function called", "driver_saw_trial",
                      "reused_function_start")
"""In place of the first three phases when the trial ran in an actor reused from an earlier trial
(``tune.trial_stop``)."""


def phase_rows(marks: dict[str, float]) -> list[tuple[str, float]]:
    """(phase, seconds) for every phase whose two marks are present."""
    return [(name, marks[end] - marks[start]) for name, start, end in [REUSED_ACTOR_PHASE, *PHASES]
            if start in marks and end in marks]


def read_trial_marks(run_dir: Path) -> dict[str, float]:
    path = Path(run_dir) / TIMELINE
    return json.loads(path.read_text()) if path.is_file() else {}


def sweep_phases(wall_s: float, sum_trial_s: float, trial_marks: dict[str, dict[str, float]]) -> dict:
    """A sweep's ``Tuner.fit`` loop (``wall_s``) with trials run one at a time: {"trials": {trial id: [(phase,
    seconds)]}, "outside_s" (``wall_s`` minus the trials' own time ``sum_trial_s``), "between_s" (Tuner
    construction, loop setup and teardown, the gaps between trials)}. ``trial_marks``: each trial's merged
    marks (trial, Train's log, driver)."""
    spans = [m["trial_complete"] - m["driver_saw_trial"] for m in trial_marks.values()
             if "trial_complete" in m and "driver_saw_trial" in m]
    ordered = sorted(trial_marks.items(), key=lambda item: item[1].get("driver_saw_trial", 0.0))
    return {"trials": {trial_id: phase_rows(marks) for trial_id, marks in ordered},
            "outside_s": wall_s - sum_trial_s, "between_s": wall_s - sum(spans)}
