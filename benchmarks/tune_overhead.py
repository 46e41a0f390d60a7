"""Ray Tune's overhead: a sweep's wall time over the sum of its trials' own times.

    python benchmarks/tune_overhead.py [--samples 2]        # starts a local Ray, 2 CPUs

Runs ``tune/sweep.py --smoke`` (tiny model, 8 steps a trial) in this process on the running Ray, one trial
at a time (``--concurrency 1``), so the ratio is the Tune loop's own cost (scheduling, trial start-up
and teardown, result handling) and not hidden by trials overlapping. The figures come from the sweep's
``summary.json``: ``sweep_wall_s`` (the ``Tuner.fit`` loop, not the baseline run before it) and
``sum_trial_s`` (each trial's wall time as the trial measures it).
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
GOAL = "<= 1.15"


def from_summary(summary: dict) -> dict:
    """The row of a sweep's ``summary.json``."""
    wall, trials = summary["sweep_wall_s"], summary["sum_trial_s"]
    concurrency = summary.get("concurrency", 1)
    return result(KEY, measure=MEASURE, ours=wall, baseline=trials, ratio=wall / trials if trials else None, goal=GOAL,
                  unit="s", details={
                      "summary": summary,
                      "note": f"tune/sweep.py --smoke, {summary['trials']} trials, {concurrency} at a time; "
                              f"{wall - trials:.1f} s of Tune time, {(wall - trials) / max(summary['trials'], 1):.1f} s "
                              f"per trial"})


def run(*, samples: int = 2, extra: list[str] = ()) -> dict:
    """Ray must be running (the sweep joins it)."""
    from tune import sweep

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "sweep"
        code = sweep.main(["--smoke", "--concurrency", "1", "--samples", str(samples), "--out", str(out), *extra])
        if code != 0:
            raise RuntimeError(f"tune/sweep.py --smoke exited with {code}")
        summary = json.loads((out / "summary.json").read_text())
    return from_summary(summary)


def main(argv: list[str] | None = None) -> None:
    from pipelines import ray_runtime

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


if __name__ == "__main__":
    main()
