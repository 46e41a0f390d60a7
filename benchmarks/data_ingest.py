"""Ray Data rows/s over torch DataLoader rows/s: the same step batches, Parquet rows, decode and augment.

    python benchmarks/data_ingest.py [--steps 120 --rounds 2 --cpus 2]     # starts a local Ray with --cpus

Ours is the training stream itself (``pipelines.data.step_stream.stream_steps``: ``data.steps_per_block`` steps
per Ray Data block (one step per block is measured too, as the before figure),
``StepBatchLoader`` actors reading the plan's rows and running the task's ``preprocess``), with ``cpus``
actors of 1 CPU each. The baseline is a ``torch.utils.data.DataLoader`` with ``cpus`` worker processes
whose dataset item ``t`` is ``StepBatchLoader.load(t)`` — the same rows, decode and augmentation. Both
yield the numpy batches of the default run's first ``steps`` steps (worker 0 of 1) to this process, which
only counts rows. The first ``2 × cpus`` steps of each side are start-up (workers, imports) and are not
timed. Rounds alternate ours and the baseline; each side's figure is its median round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402

KEY = "data_ingest_ratio"
MEASURE = "Ray Data rows/s / DataLoader rows/s"
GOAL = ">= 1.0"


def ingest_spec(data_root: str | Path, steps: int):
    """The default run's stream spec (``StreamSpec``) for one worker and ``steps`` steps."""
    from benchmarks.run_inputs import default_run
    from pipelines.data.stream_spec import StreamSpec

    run = default_run(data_root, [f"train.steps={steps}", "scale.num_workers=1"])
    return StreamSpec.of(run, Path(data_root))


class StepDataset:
    """Map-style dataset: item t = worker ``rank``'s step-t batch, made by the training stream's own loader."""

    def __init__(self, spec, rank: int = 0):
        self.spec, self.rank, self.loader = spec, rank, None

    def __len__(self) -> int:
        return self.spec.run.train.steps

    def __getitem__(self, step: int) -> dict:
        if self.loader is None:  # built in the worker process, like the Ray actor's heavy set-up
            from pipelines.data.step_stream import StepBatchLoader

            self.loader = StepBatchLoader(self.spec, rank=self.rank)
        return self.loader.load(step)


def keep_numpy(item: dict) -> dict:
    return item


def _rows_per_second(batches, spec, warmup: int) -> tuple[float, float]:
    """Consume ``batches`` (iterables of (task,) per step) → (rows/s after ``warmup`` steps, start-up s)."""
    sizes = {name: task.batch_size for name, task in spec.run.tasks.items()}
    start = time.perf_counter()
    rows, timed_from, first_ready = 0, None, None
    for index, task in enumerate(batches):
        if index == 0:
            first_ready = time.perf_counter() - start
        if index == warmup:
            timed_from = time.perf_counter()
        elif index > warmup:
            rows += sizes[task]
    return rows / (time.perf_counter() - timed_from), first_ready


def ray_data_rows(spec, cpus: int, warmup: int, steps_per_block: int) -> tuple[float, float]:
    from pipelines.data.step_stream import stream_steps

    stream = stream_steps(spec, rank=0, start=0, concurrency=cpus, num_cpus=1, prefetch=2 * cpus,
                          steps_per_block=steps_per_block)
    return _rows_per_second((task for _, task, _, _ in stream), spec, warmup)


def dataloader_rows(spec, cpus: int, warmup: int) -> tuple[float, float]:
    import torch.utils.data

    loader = torch.utils.data.DataLoader(StepDataset(spec), batch_size=None, shuffle=False, num_workers=cpus,
                                         collate_fn=keep_numpy, prefetch_factor=2,
                                         multiprocessing_context="fork")
    return _rows_per_second((item["task"] for item in loader), spec, warmup)


def run(data_root: str | Path, *, steps: int = 120, rounds: int = 2, cpus: int = 2,
        steps_per_block: int | None = None) -> dict:
    """Ray must be running with at least ``cpus`` free CPUs. ``steps_per_block``: of the measured stream
    (default: the run config's ``data.steps_per_block``); one step per block is measured too, as before."""
    from unip2.run_config import DataConfig

    spec = ingest_spec(data_root, steps)
    warmup = 2 * cpus
    per_block = steps_per_block or DataConfig().steps_per_block
    sides = [("ours", lambda *a: ray_data_rows(*a, steps_per_block=per_block)), ("baseline", dataloader_rows)]
    if per_block != 1:
        sides.append(("ours_1_step_per_block", lambda *a: ray_data_rows(*a, steps_per_block=1)))
    figures: dict[str, list[float]] = {name: [] for name, _ in sides}
    startup: dict[str, list[float]] = {name: [] for name, _ in sides}
    for _ in range(rounds):
        for name, measure in sides:
            rate, first = measure(spec, cpus, warmup)
            figures[name].append(rate)
            startup[name].append(first)
    ours, baseline = statistics.median(figures["ours"]), statistics.median(figures["baseline"])
    others = {name: statistics.median(v) / baseline for name, v in figures.items() if name.startswith("ours_")}
    return result(KEY, measure=MEASURE, ours=ours, baseline=baseline, ratio=ours / baseline, goal=GOAL,
                  unit="rows/s", details={
                      "rounds_rows_per_s": figures, "first_batch_s": startup, "cpus": cpus, "steps": steps,
                      "untimed_steps": warmup, "inputs": {task: spec.inputs(task) for task in spec.run.tasks}, "steps_per_block": per_block,
                      "other_ratios": others,
                      "note": f"default-run step batches (8 rows, 5 tasks), {steps} steps, {per_block} steps per "
                              f"block, {cpus} Ray Data actors × 1 CPU vs {cpus} DataLoader workers; median of "
                              f"{rounds} alternating rounds"
                              + "".join(f"; {k}: ratio {v:.2f}" for k, v in others.items())})


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run_inputs import embedded_data
    from pipelines.run import ray_runtime  # noqa: F401  (Ray's environment)

    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="converted data folder (default: the embedded default data)")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--steps-per-block", type=int, help="steps per Ray Data block (default: data.steps_per_block)")
    args = parser.parse_args(argv)
    data_root = args.data or embedded_data()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        row = run(data_root, steps=args.steps, rounds=args.rounds, cpus=args.cpus, steps_per_block=args.steps_per_block)
    finally:
        ray.shutdown()
    print({k: v for k, v in row.items() if k != "details"}, row["details"]["note"])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
