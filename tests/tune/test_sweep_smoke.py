"""The smoke sweep (``python tune/sweep.py --smoke``) on the test run's local Ray, shared by the module:
interrupted at its first trial result (SIGUSR1, Tune's graceful stop, like Ctrl+C), resumed by re-running
the command with the same ``--out``, then its outputs checked and ``best.yaml`` trained."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import ray.tune

from pipelines.stage1.encoders import pretrain_if_needed
from pipelines.run.prepare import prepare_run
from pipelines.training.trainer import fit
from tune import sweep
from tune.objective import OBJECTIVE, metric_key
from unip2.run_config import load_run_config
from unip2.tasks import TASKS

from tune_callbacks import InterruptOnFirstResult


def trial_results(out: Path, trial_id: str) -> list[dict]:
    """Every result Tune recorded for a trial, across the interruption."""
    (folder,) = [p for p in (out / "tune").iterdir() if p.is_dir() and trial_id in p.name]
    return [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]


def free_cpus(timeout_s: float = 20.0, expected: float | None = None) -> float:
    """Available CPUs once they stop changing (or reach ``expected``): actors exit asynchronously."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        now = ray.available_resources().get("CPU", 0.0)
        if (expected is not None and now >= expected - 1e-6) or (expected is None and now == last):
            return now
        last = now
        time.sleep(1.0)
    return ray.available_resources().get("CPU", 0.0)


@pytest.fixture(scope="module")
def smoke(ray_local, embedded_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "smoke"
    marker = out.parent / "interrupted"
    cpus_before = free_cpus()
    started = time.time()
    # The time budget turns a deadlock into a failure instead of a hung test run.
    first = sweep.main(["--smoke", "--time-budget", "900", "--out", str(out), f"data.root={embedded_data}"],
                       callbacks=[InterruptOnFirstResult(marker)])
    state = SimpleNamespace(first=first, interrupted_after_s=time.time() - started,
                            can_restore=ray.tune.Tuner.can_restore(str(out / "tune")),
                            baseline_mtime=(out / "baseline.json").stat().st_mtime,
                            rows_at_interruption=list(csv.DictReader((out / "results.csv").open())))
    state.second = sweep.main(["--out", str(out)])
    state.wall_s = time.time() - started
    state.out, state.marker, state.cpus_before = out, marker, cpus_before
    state.rows = list(csv.DictReader((out / "results.csv").open()))
    state.summary = json.loads((out / "summary.json").read_text())
    print(f"\nsmoke sweep: {state.wall_s:.0f} s (interrupted after {state.interrupted_after_s:.0f} s)\n"
          + (out / "results.md").read_text() + json.dumps(state.summary, indent=1))
    return state


def test_an_interrupted_sweep_resumes_where_it_stopped(smoke):
    assert smoke.first == 130 and smoke.can_restore
    assert [r["trial"] for r in smoke.rows_at_interruption][0] == "baseline"
    assert any(r["status"] == "unfinished" for r in smoke.rows_at_interruption)
    assert smoke.second == 0
    assert (smoke.out / "baseline.json").stat().st_mtime == smoke.baseline_mtime  # measured once, reused
    trials = [r for r in smoke.rows if r["trial"] != "baseline"]
    assert len(trials) == 2 and {r["status"] for r in trials} <= {"completed", "stopped early"}
    assert any(r["status"] == "completed" for r in trials)
    # The trial that reported first had its Train checkpoint at step 4 when interrupted; resumed, Train went
    # on from its last checkpoint: a restart from scratch would report step 4 again.
    steps = [r["step"] for r in trial_results(smoke.out, smoke.marker.read_text()) if "step" in r]
    assert steps[0] == 4 and len(steps) == len(set(steps))
    assert all((smoke.out / "trials" / r["trial"] / "trial.json").is_file() for r in trials)


def test_results_table_plot_and_summary(smoke):
    columns = list(smoke.rows[0])
    for name in TASKS:
        assert metric_key(name) in columns
        assert f"tasks.{name}.omega" in columns and f"tasks.{name}.sampling_weight" in columns
    assert {OBJECTIVE, "optim.lr", "status", "trial_wall_s"} <= set(columns)
    assert smoke.rows[0]["trial"] == "baseline" and float(smoke.rows[0][OBJECTIVE]) == 1.0
    for row in smoke.rows:
        if row["status"] == "completed":
            assert float(row[OBJECTIVE]) > 0 and all(row[metric_key(name)] != "" for name in TASKS)
    assert (smoke.out / "sweep.png").stat().st_size > 10_000
    assert "| baseline |" in (smoke.out / "results.md").read_text()
    summary = smoke.summary
    assert summary["trials"] == 2 and summary["sweep_wall_s"] > 0 and summary["sum_trial_s"] > 0
    assert summary["tune_overhead_ratio"] == pytest.approx(summary["sweep_wall_s"] / summary["sum_trial_s"])


def test_two_trials_ran_at_once_without_deadlock_and_freed_their_resources(smoke):
    assert smoke.summary["concurrency"] == 2  # sized for 2 CPUs: 2 × 0.45 reserved, one CPU left for Ray Data
    # Trials stopped by the interruption (or by ASHA) leave Train placement groups behind; the sweep frees them.
    assert free_cpus(expected=smoke.cpus_before) == pytest.approx(smoke.cpus_before)


def test_the_exported_config_trains(smoke, tmp_path):
    best = smoke.out / "best.yaml"
    config = load_run_config(best)
    chosen = next(r for r in smoke.rows if r["trial"] == smoke.summary["best"]["trial"])
    for name in TASKS:
        assert config.tasks[name].omega == pytest.approx(float(chosen[f"tasks.{name}.omega"]))
        assert config.tasks[name].sampling_weight == pytest.approx(float(chosen[f"tasks.{name}.sampling_weight"]))
    assert config.optim.lr == pytest.approx(float(chosen["optim.lr"])) and config.out is None
    assert "python pipelines/train.py --config" in best.read_text().splitlines()[1]
    run, out, root = prepare_run(str(best), ["train.steps=2", "train.checkpoint_every=2", "train.log_every=2"],
                                 out=str(tmp_path / "from_best"))
    checkpoint = fit(pretrain_if_needed(run, root, out), out=out, data_root=root)
    assert json.loads((checkpoint / "train_state.json").read_text())["step"] == 2
