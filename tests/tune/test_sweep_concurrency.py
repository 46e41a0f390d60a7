"""The sweep's Tuner never runs more trials at once than the concurrency sized for the machine: with
more, Train workers and data loaders would hold the CPU that Ray Data's tasks need and every trial would
wait forever. Checked with a sleeping trainable, so it takes seconds."""

from __future__ import annotations

import time

import ray.tune

from tune import sweep
from tune.objective import PROGRESS
from tune.search_space import SearchSpace
from tune.tuner import SweepSettings, SweepSpec, make_tuner, report_count
from unip2.run_config import load_run_config


def test_no_more_trials_run_at_once_than_the_sized_concurrency(ray_local, tmp_path):
    reports = report_count(load_run_config(None, sweep.SMOKE_RUN))

    def sleepy(config: dict) -> None:  # defined here so Ray ships it by value (tests are not importable there)
        """Stands in for a trial: reports ``progress`` as many times as a smoke trial does."""
        started = time.time()
        for _ in range(reports):
            time.sleep(0.5)
            ray.tune.report({PROGRESS: config["optim"]["lr"], "started": started, "now": time.time()})

    spec = SweepSpec(overrides=list(sweep.SMOKE_RUN), space=SearchSpace(omega=None, sampling_weight=None),
                     settings=SweepSettings(samples=5))
    trainable = ray.tune.with_resources(sleepy, {"CPU": 0.1})  # resources alone would let all 5 start
    grid = make_tuner(spec, tmp_path, trainable, concurrency=2).fit()
    spans = [(r.metrics["started"], r.metrics["now"]) for r in grid]  # ASHA may stop some: their last report
    assert len(spans) == 5
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most <= 2
