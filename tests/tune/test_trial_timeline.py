"""The phases of a sweep trial from its three clocks (trial, Ray Train's log, Tune driver), without Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tune.trial_timeline import (PHASES, REUSED_ACTOR_PHASE, DriverTimeline, TrialClock, phase_rows,
                                 read_trial_marks, sweep_phases, train_log_marks)


def test_consecutive_marks_become_phases_and_missing_ones_are_left_out():
    names = list(dict.fromkeys([start for _, start, _ in PHASES] + [PHASES[-1][2]]))
    marks = {name: float(i) for i, name in enumerate(names)}
    rows = phase_rows(marks)
    assert [name for name, _ in rows] == [name for name, _, _ in PHASES]
    assert all(seconds == 1.0 for _, seconds in rows)
    del marks["fit_returned"]
    assert len(phase_rows(marks)) == len(PHASES) - 2


def test_a_trial_in_a_reused_actor_has_one_phase_before_its_function():
    rows = phase_rows({"driver_saw_trial": 1.0, "reused_function_start": 1.5, "function_start": 1.5, "prepared": 2.0})
    assert rows == [(REUSED_ACTOR_PHASE[0], 0.5), (PHASES[3][0], 0.5)]


def test_ray_train_log_lines_of_one_run_become_marks(tmp_path):
    logs = tmp_path / "logs" / "train"
    logs.mkdir(parents=True)
    lines = [("trial_a", "Requesting resources: {'CPU': 0.25} * 1", 10.0),
             ("trial_b", "Requesting resources: {'CPU': 0.25} * 1", 11.0),
             ("trial_a", "[Worker Group Initialization] 1 worker actors created in 1.73s.", 12.0),
             ("trial_a", "Checkpoint successfully created at: Checkpoint(...)", 13.0),
             ("trial_a", "Checkpoint successfully created at: Checkpoint(...)", 14.0),
             ("trial_a", "Worker group shutdown successful.", 15.0)]
    (logs / "ray-train-sys-controller-x.log").write_text(
        "\n".join(json.dumps({"run_name": run, "message": message, "timestamp_ns": int(t * 1e9)})
                  for run, message, t in lines) + "\nnot json\n")
    assert train_log_marks("trial_a", tmp_path) == {
        "train_controller_init": 10.0, "train_workers_created": 12.0, "train_last_checkpoint": 14.0,
        "train_shutdown_done": 15.0}
    assert train_log_marks("nobody", tmp_path) == {}


def test_driver_callback_and_trial_clock_split_a_sweep(tmp_path):
    driver = DriverTimeline()
    driver.setup()
    trial = SimpleNamespace(trial_id="t1")
    driver.on_step_begin(0, [trial])
    first_seen = driver.trials["t1"]["driver_saw_trial"]
    driver.on_step_begin(1, [trial])
    assert driver.trials["t1"]["driver_saw_trial"] == first_seen  # the first sighting is kept
    clock = TrialClock(module_imported=first_seen)
    clock.mark("function_start")
    assert read_trial_marks(tmp_path) == {}  # nothing written before the run folder is known
    clock.keep_in(tmp_path)
    assert set(read_trial_marks(tmp_path)) == {"module_imported", "function_start"}
    clock.mark("reported")  # written at once: a trial stopped early keeps what it reached
    driver.on_trial_result(2, [trial], trial, {})
    driver.on_trial_complete(3, [trial], trial)
    driver.on_experiment_end([trial])
    marks = {**read_trial_marks(tmp_path), **driver.trials["t1"]}
    assert marks["driver_saw_trial"] <= marks["function_start"] <= marks["reported"] <= marks["trial_complete"]
    wall = driver.loop_ended - driver.loop_started + 0.5
    phases = sweep_phases(wall, 0.25, {"t1": marks})
    assert phases["outside_s"] == pytest.approx(wall - 0.25)
    assert phases["between_s"] == pytest.approx(wall - (marks["trial_complete"] - marks["driver_saw_trial"]))
    assert read_trial_marks(tmp_path / "absent") == {}
