"""The default run's training step in bf16 over the same step in fp32 (``train.precision``).

    python benchmarks/precision_step.py [--steps 60 --log-every 10 --rounds 2]   # starts a local Ray, 2 CPUs

Both sides are ``pipelines.training.trainer.fit`` on the default run (tiny preset, every task, 2 workers of 0.5 CPU,
Ray Data step stream, DDP, MT-AdamW), the same steps and rows, differing only in ``train.precision``. Step
times are read from the loop's logged windows as ``train_overhead`` does (the first window left out); rounds
alternate the sides and each side's figure is its median round. The figure is fp32 ms/step ÷ bf16 ms/step:
how much faster the step runs in bf16 (on a CPU without native bf16, ``auto`` is fp32 and bf16 is refused).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402
from benchmarks.train_overhead import bench_run, ray_train_step_s, training_benchmark_main  # noqa: E402

KEY = "bf16_step_speedup"
MEASURE = "default run's Ray Train step, fp32 time / bf16 time (train.precision)"
GOAL = ">= 1.5"


def run(data_root: str | Path, *, steps: int = 60, log_every: int = 10, rounds: int = 2, workers: int = 2) -> dict:
    """Ray must be running (2 CPUs: the workers take 0.5 each, the stream's loaders 0.5 each)."""
    import copy

    import torch

    from unip2.precision import resolve_precision

    resolve_precision("bf16", torch.device("cpu"))  # a CPU without native bf16 is refused here, by name
    data_root = Path(data_root).resolve()
    base = bench_run(data_root, steps, log_every, workers)
    runs = {}
    for precision in ("bf16", "fp32"):
        runs[precision] = copy.deepcopy(base)
        runs[precision].train.precision = precision
    times: dict[str, list[float]] = {"bf16": [], "fp32": []}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(rounds):
            for precision, train_run in runs.items():
                folder = Path(scratch) / f"{precision}{index}"
                folder.mkdir()
                step_s, _ = ray_train_step_s(train_run, data_root, folder)
                times[precision].append(step_s)
    bf16, fp32 = statistics.median(times["bf16"]) * 1e3, statistics.median(times["fp32"]) * 1e3
    return result(KEY, measure=MEASURE, ours=bf16, baseline=fp32, ratio=fp32 / bf16, goal=GOAL, unit="ms/step",
                  details={"rounds_step_ms": {k: [v * 1e3 for v in vs] for k, vs in times.items()}, "steps": steps,
                           "log_every": log_every, "workers": workers,
                           "note": f"default run (tiny, every task) × {workers} workers, {steps} steps, first "
                                   f"{log_every} untimed; median of {rounds} alternating rounds"})


def main(argv: list[str] | None = None) -> None:
    training_benchmark_main(run, __doc__.split("\n\n")[0], argv, rounds=2)


if __name__ == "__main__":
    main()
