"""Model FLOP/s in forward + backward over the matmul peak FLOP/s of the same machine (CPU), in the step's precision.

    python benchmarks/flops.py [--rounds 3 --steps 3 --threads 1] [--profile]

FLOPs of one forward + backward of each task's default-run batch are counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention). The peak is the best of
square fp32 matmuls (``--matmul-n``) with the same thread count. Rounds alternate one peak block with one
block of every task, so load on the shared machine hits both; both sides take their best block. The step runs
in the default run's ``train.precision`` (bf16 autocast where the CPU has native bf16) and the peak is measured
in the same dtype: bf16 matmuls against a bf16 step, fp32 against fp32.
``--profile`` prints the torch profiler's top operators of one step per task (where the time goes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.results_table import result  # noqa: E402

KEY = "flops_utilization"
MEASURE = "model fwd+bwd FLOP/s / matmul peak FLOP/s"
GOAL = ">= 0.4"


def matmul_gflops(n: int, repeats: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of ``repeats`` n×n matmuls in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def make_steps(data_root: str | Path):
    """{task: forward + backward of its default-run batch} on the tiny model (train mode), in the run's
    precision."""
    import unip2
    from benchmarks.run_inputs import default_run, task_batches
    from unip2.precision import autocast, resolve_precision
    from unip2.tasks import TASKS
    from unip2.training_setup import TaskLoss

    run = default_run(data_root)
    cpu = torch.device("cpu")
    precision = resolve_precision(run.train.precision, cpu)
    torch.manual_seed(0)
    model = unip2.build_model(run.model).train()
    loss_module = TaskLoss(model)
    batches = {name: TASKS[name].collate(b, torch.device("cpu"))
               for name, b in task_batches(run, data_root, model.tokenizer).items()}

    def step_of(name: str):
        def step() -> None:
            model.zero_grad(set_to_none=True)
            with autocast(precision, cpu):
                loss, _ = loss_module(name, batches[name])
            loss.backward()
        return step

    return {name: step_of(name) for name in batches}, run


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def profile(steps: dict, rows: int = 12) -> None:
    """Print the operators that take the most self CPU time in one step of each task."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, step in steps.items():
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"\n== {name}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def run(data_root: str | Path, *, rounds: int = 3, steps: int = 3, threads: int = 1, matmul_n: int = 1024) -> dict:
    from unip2.precision import resolve_precision

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        task_steps, run_config = make_steps(data_root)
        precision = resolve_precision(run_config.train.precision, torch.device("cpu"))
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        flops = {name: count_flops(step) for name, step in task_steps.items()}  # also the warm-up
        peaks: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in task_steps}
        for _ in range(rounds):
            peaks.append(matmul_gflops(matmul_n, dtype=dtype))
            for name, step in task_steps.items():
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                times[name].append((time.perf_counter() - start) / steps)
    finally:
        torch.set_num_threads(previous)
    best = {name: min(v) for name, v in times.items()}
    model_gflops = sum(flops.values()) / sum(best.values()) / 1e9  # every task once (uniform sampling)
    peak = max(peaks)
    per_task = {name: {"gflop_per_step": flops[name] / 1e9, "step_ms": best[name] * 1e3,
                       "gflops": flops[name] / best[name] / 1e9, "utilization": flops[name] / best[name] / 1e9 / peak}
                for name in task_steps}
    return result(KEY, measure=MEASURE, ours=model_gflops, baseline=peak, ratio=model_gflops / peak, goal=GOAL,
                  unit="GFLOP/s", details={
                      "per_task": per_task, "peak_gflops_rounds": peaks, "threads": threads, "matmul_n": matmul_n,
                      "rounds": rounds, "steps_per_block": steps, "precision": precision,
                      "note": f"tiny preset, default-run batches, {precision}, {threads} thread; "
                              + ", ".join(f"{n} {v['utilization']:.2f}" for n, v in per_task.items())})


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run_inputs import embedded_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="converted data folder (default: the embedded default data)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--profile", action="store_true", help="print the top operators of each task's step")
    args = parser.parse_args(argv)
    data_root = args.data or embedded_data()
    if args.profile:
        torch.set_num_threads(args.threads)
        profile(make_steps(data_root)[0])
        return
    row = run(data_root, rounds=args.rounds, steps=args.steps, threads=args.threads, matmul_n=args.matmul_n)
    print({k: v for k, v in row.items() if k != "details"})
    for name, figures in row["details"]["per_task"].items():
        print(name, {k: round(v, 3) for k, v in figures.items()})


if __name__ == "__main__":
    main()
