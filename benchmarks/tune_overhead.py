"""Ray Tune's overhead: a sweep's wall time over the sum of its trials' own times.

    python benchmarks/tune_overhead.py [--samples 2]        # starts a local Ray, 2 CPUs

Runs ``tune/sweep.py --smoke`` (tiny model, 8 steps a trial) in this process on the running Ray, one trial
at a time (``--concurrency 1``), so the ratio is the Tune loop's own cost (scheduling, trial start-up
and teardown, result handling) and not hidden by trials overlapping. The figures come from the sweep's
``summary.json``: ``sweep_wall_s`` (the ``Tuner.fit`` loop, not the baseline run before it) and
``sum_trial_s`` (each trial's wall time as the trial measures it, from its function's start to its last
report). Everything a trial does inside its function (Ray Train's start, training, evaluation) is the
trial's own time: shortening it raises the ratio for the same Tune cost. The row's details hold every
trial's phases (``tune.trial_timeline``), also printed by this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402

KEY = "tune_overhead_ratio"
MEASURE = "sweep wall time / sum of trial times"
GOAL = "<= 1.10"


def from_summary(summary: dict) -> dict:
    """The row of a sweep's ``summary.json``."""
    wall, trials = summary["sweep_wall_s"], summary["sum_trial_s"]
    concurrency = summary.get("concurrency", 1)
    return result(KEY, measure=MEASURE, ours=wall, baseline=trials, ratio=wall / trials if trials else None, goal=GOAL,
                  unit="s", details={
                      "summary": summary,
                      "note": f"tune/sweep.py --smoke, {summary['trials']} trials, {concurrency} at a time; "
                              f"{wall - trials:.1f} s of Tune time, {(wall - trials) / max(summary['trials'], 1):.1f} s "
                              f"per trial; {wall / max(summary['trials'], 1):.1f} s of sweep wall per trial"})


def run(*, samples: int = 2, extra: list[str] = ()) -> dict:
    """Ray must be running (the sweep joins it). The row's details hold every trial's phases
    (``tune.trial_timeline``)."""
    from tune import sweep
    from tune.trial_timeline import DriverTimeline, read_trial_marks, sweep_phases, train_log_marks

    timeline = DriverTimeline()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "sweep"
        code = sweep.main(["--smoke", "--concurrency", "1", "--samples", str(samples), "--out", str(out), *extra],
                          callbacks=[timeline])
        if code != 0:
            raise RuntimeError(f"tune/sweep.py --smoke exited with {code}")
        summary = json.loads((out / "summary.json").read_text())
        marks = {trial: {**read_trial_marks(out / "trials" / trial), **train_log_marks(trial), **driver}
                 for trial, driver in timeline.trials.items()}
    row = from_summary(summary)
    row["details"]["phases"] = sweep_phases(summary["sweep_wall_s"], summary["sum_trial_s"], marks)
    row["details"]["marks"] = marks
    return row


def phase_table(phases: dict) -> str:
    """The phases of ``run``'s details as text: one column per trial."""
    trials = list(phases["trials"])
    names = list(dict.fromkeys(name for rows in phases["trials"].values() for name, _ in rows))
    seconds = {trial: dict(rows) for trial, rows in phases["trials"].items()}
    lines = [f"{'phase':<80}" + "".join(f"{t[-14:]:>16}" for t in trials)]
    for name in names:
        lines.append(f"{name:<80}" + "".join(f"{seconds[t].get(name, float('nan')):>16.2f}" for t in trials))
    lines.append(f"{'Tuner construction, loop setup/teardown, between trials':<80}{phases['between_s']:>16.2f}")
    lines.append(f"outside the trial functions {phases['outside_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from pipelines.run import ray_runtime

    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
    try:
        row = run(samples=args.samples)
    finally:
        ray.shutdown()
    print({k: v for k, v in row.items() if k != "details"}, row["details"]["note"])
    print(phase_table(row["details"]["phases"]))


if __name__ == "__main__":
    main()
