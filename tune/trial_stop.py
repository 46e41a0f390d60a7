"""One trial actor for many trials (Tune's ``reuse_actors``), and stopping the Train run of a trial Tune stopped.

A fresh trial actor costs ~5 s on 2 cores before the trial function runs: the worker process, then importing
torch, the model and Ray Train (``tune.trial_timeline`` measures it). With ``reuse_actors`` Tune hands a finished
or stopped trial's actor to the next trial instead (``reset_config``). A trial that ASHA stops is still inside
``TorchTrainer.fit()`` in that actor, and Ray Train 2.60 has no public call that stops a run from another thread,
so without more the reset would wait 2 s, fail, and fail the next trial with it. Here the trial asks its Train
run to end, and the run ends itself:

- ``reset_config`` (``reusable``) writes ``<run folder>/STOP`` and waits for the trial function to return (and
  so does ``cleanup``, when Tune stops the actor of a stopped trial that no other trial follows);
- ``StopWatcher`` runs in the trial's Train controller (started by the trial's report callback at its first
  report: Tune stops trials on results, so never before one). It polls for that file and kills its own
  controller actor; the worker actors are the controller's and go with it, and ``fit()`` raises in the trial.
  The controller always runs on the trial actor's node (Train places it with the process that calls ``fit``),
  so the file is seen on a cluster too;
- the trial function sees the stop it asked for (``RunningTrial.stop_requested``), skips its evaluation and
  final report, and returns. The killed run's checkpoints stay in its folder; its worker placement group is
  freed by the sweep's ``tune.orphaned_groups`` sweeper.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

STOP_FILE = "STOP"
"""Written into a trial's run folder when its actor is reset for the next trial."""
POLL_S = 0.25
"""How often a Train controller looks for its trial's stop file."""
RETURN_TIMEOUT_S = 120.0
"""How long a reset waits for the stopped trial's function to return (Train's teardown, or an evaluation that
had already started) before handing over anyway; Tune's own wait after it is 2 s."""


@dataclass
class RunningTrial:
    """The trial whose function runs in this actor now."""

    run_dir: Path
    returned: threading.Event = field(default_factory=threading.Event)

    @property
    def stop_file(self) -> Path:
        return self.run_dir / STOP_FILE

    def stop_requested(self) -> bool:
        return self.stop_file.exists()


_running: RunningTrial | None = None


def ran_a_trial() -> bool:
    """Whether an earlier trial ran in this process (the actor was reused)."""
    return _running is not None


def begin(run_dir: Path) -> RunningTrial:
    """Called by the trial function first: this actor now runs the trial of ``run_dir`` (a stop file left by an
    earlier attempt of the same trial is removed)."""
    global _running
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.joinpath(STOP_FILE).unlink(missing_ok=True)
    _running = RunningTrial(run_dir)
    return _running


def end(trial: RunningTrial) -> None:
    """Called by the trial function last, however it ends."""
    trial.returned.set()


def stop_running_trial(timeout_s: float = RETURN_TIMEOUT_S) -> bool:
    """Ask the trial function still running in this actor to end (its Train run stops itself), and wait for it;
    False when it did not return within ``timeout_s``. No trial running: True at once."""
    trial = _running
    if trial is None or trial.returned.is_set():
        return True
    trial.stop_file.write_text(f"{time.time()}\n")
    return trial.returned.wait(timeout_s)


def reusable(trainable_cls: type) -> type:
    """``trainable_cls`` (a function trainable, ``wrap_function``'s class) whose actor Tune may hand to the next
    trial while this one's Train run is still going: the reset stops that run first."""

    class ReusableTrial(trainable_cls):
        def reset_config(self, new_config):
            stop_running_trial()
            return super().reset_config(new_config)

        def cleanup(self):
            # A stopped trial that no other trial follows: its actor is stopped, not reset. Tune's cleanup does not
            # wait for the trial function, so the Train run went on until the actor process was gone, and its
            # worker group outlived the sweep on a loaded machine. End the run first, as a reset does.
            stop_running_trial()
            return super().cleanup()

    ReusableTrial.__name__ = ReusableTrial.__qualname__ = trainable_cls.__name__
    return ReusableTrial


class StopWatcher:
    """In a Train controller: kills the controller (and with it the run's workers) once ``stop_file`` exists."""

    def __init__(self, stop_file: str):
        self.stop_file = Path(stop_file)
        self._thread = threading.Thread(target=self._watch, name="trial-stop-watcher", daemon=True)

    def start(self) -> StopWatcher:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop_file.exists():
            time.sleep(POLL_S)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
