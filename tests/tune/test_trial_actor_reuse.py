"""Sweep trials share one trial actor (Tune's ``reuse_actors``), also after a trial stopped while its Train run was
going: the run ends itself when the actor is handed on (``tune.trial_stop``), the next trial trains and evaluates in
the same process, and no CPU stays held. A scheduler stops the second and third trials at their first report, so the
second is stopped mid-run and followed by another trial every time (ASHA's choice depends on the losses)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune import sweep, tuner
from tune.trial_stop import STOP_FILE
from tune.trial_timeline import read_trial_marks

STEPS = 48
"""Long enough that a run stopped at its first report (step 4) is still training when the next trial starts."""


class StopAfterFirstTrial(FIFOScheduler):
    """Every trial but the first is stopped at its first result."""

    def on_trial_result(self, tune_controller, trial, result):
        return TrialScheduler.CONTINUE if trial.trial_id.endswith("_00000") else TrialScheduler.STOP


def test_trials_share_one_actor_and_a_stopped_trials_run_ends_when_the_actor_moves_on(
        ray_local, embedded_data, tmp_path, monkeypatch):
    monkeypatch.setattr(tuner, "make_scheduler", lambda run, settings: StopAfterFirstTrial())
    cpus_before = ray.available_resources().get("CPU", 0.0)
    out = tmp_path / "sweep"
    code = sweep.main(["--smoke", "--samples", "3", "--concurrency", "1", "--time-budget", "600", "--out", str(out),
                       f"data.root={embedded_data}", f"train.steps={STEPS}"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completed"], summary["stopped_early"], summary["errors"]) == (1, 2, 0)

    trials = sorted(p.name for p in (out / "trials").iterdir())
    assert len(trials) == 3
    pids = set()
    for folder in (out / "tune").iterdir():
        if folder.is_dir():
            pids |= {json.loads(line)["pid"] for line in (folder / "result.json").read_text().splitlines()}
    assert len(pids) == 1, f"the trials ran in {len(pids)} actors"

    first, second, third = (read_trial_marks(out / "trials" / name) for name in trials)
    assert "module_imported" in first and "reused_function_start" not in first
    assert "reused_function_start" in second and "reused_function_start" in third
    assert "evaluated" in first and "evaluated" not in second

    stopped_dir = out / "trials" / trials[1]
    assert (stopped_dir / STOP_FILE).is_file()
    assert "fit_returned" not in second and "stopped" in second  # its run was ended, not trained to the end
    checkpoints = sorted(p.name for p in Path(stopped_dir / "ray" / trials[1]).glob("checkpoint_*"))
    assert checkpoints and checkpoints[-1] != f"checkpoint_{STEPS:07d}"

    # The killed run's workers and placement group are gone: every CPU is free again.
    assert cpus_once_settled(cpus_before) >= cpus_before - 1e-6


def cpus_once_settled(expected: float, timeout_s: float = 30.0) -> float:
    """Available CPUs once they reach ``expected`` (actors exit asynchronously), or after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = ray.available_resources().get("CPU", 0.0)
        if now >= expected - 1e-6:
            return now
        time.sleep(1.0)
    return ray.available_resources().get("CPU", 0.0)
