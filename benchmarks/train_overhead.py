"""Ray Train step time (2 workers) over a bare torch loop doing the same work.

    python benchmarks/train_overhead.py [--steps 60 --log-every 10 --rounds 1]   # starts a local Ray, 2 CPUs

Ours: ``pipelines.training.trainer.fit`` on the default run (tiny preset, five tasks, batch 8, 2 workers of 0.5
CPU, Ray Data step stream, DDP, MT-AdamW), one checkpoint at the end. Baseline: the same step in two
plain processes joined by a gloo process group — same plan, same rows, decode and augment (a DataLoader
worker per process calling the training stream's own ``StepBatchLoader``), same model, DDP with
``find_unused_parameters``, all-gathered retrieval negatives, finite check, MT-AdamW, learning-rate
schedule and loss read-back. Both sides time windows of ``log_every`` steps the way the training loop
logs steps/s; the first window (start-up, first batches) is left out, and the figure is the mean step
time of the rest. Rounds alternate the two sides; each side's figure is its median round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_table import result  # noqa: E402

KEY = "train_overhead_ratio"
MEASURE = "Ray Train step time (2 workers) / bare torch DDP step time"
GOAL = "<= 1.05"


def bench_run(data_root: str | Path, steps: int, log_every: int, workers: int):
    from benchmarks.run_inputs import default_run

    return default_run(data_root, [f"train.steps={steps}", f"train.log_every={log_every}",
                                   f"train.checkpoint_every={steps}", f"scale.num_workers={workers}",
                                   "scale.max_failures=0"])


def steady_step_s(history: list[dict], log_every: int) -> float:
    """Mean step time over the logged windows but the first: ``history`` entries {"step", "steps_per_s"}."""
    windows = [(e["step"] - previous["step"], e["steps_per_s"]) for previous, e in zip(history, history[1:])]
    if not windows:
        raise ValueError(f"need at least 2 logged windows of {log_every} steps, got {len(history)}")
    return sum(n / speed for n, speed in windows) / sum(n for n, _ in windows)


def ray_train_step_s(run, data_root: Path, out: Path) -> tuple[float, list[dict]]:
    from pipelines.training.checkpoints import read_state
    from pipelines.training.trainer import fit

    history = read_state(fit(run, out=out, data_root=data_root))["history"]
    return steady_step_s(history, run.train.log_every), history


# ------------------------------------------------------------------------------------- baseline
def _bare_worker(rank: int, world_size: int, port: int, spec, out: str) -> None:
    """One process of the bare loop: the training loop's step without Ray."""
    import torch
    import torch.distributed as dist
    import torch.utils.data
    from torch.nn.parallel import DistributedDataParallel

    import unip2
    from benchmarks.data_ingest import StepDataset, keep_numpy
    from unip2.distributed import gather_with_grad
    from unip2.model.tokenizer import TextTokenizer
    from unip2.precision import autocast, resolve_precision
    from unip2.tasks import TASKS
    from unip2.tasks.base import local_gather
    from unip2.training_setup import TaskLoss, learning_rate, optimizer_for, set_learning_rate
    from unip2.training_step import TrainingStep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    run = spec.run
    torch.set_num_threads(run.scale.threads_per_worker)
    torch.manual_seed(run.train.seed)
    model = unip2.build_model(run.model, TextTokenizer.from_json(spec.tokenizer_json))
    optimizer = optimizer_for(model, run.optim)
    wrapped = DistributedDataParallel(TaskLoss(model), find_unused_parameters=True)
    train_step = TrainingStep(loss_module=wrapped, optimizer=optimizer, ratios=run.sampling_ratios(),
                              omegas=run.omegas(),
                              gather=gather_with_grad if run.train.sampling == "unmixed" else local_gather,
                              autocast=autocast(resolve_precision(run.train.precision, torch.device("cpu")),
                                                torch.device("cpu")))
    loader = torch.utils.data.DataLoader(StepDataset(spec, rank=rank), batch_size=None, num_workers=1,
                                         collate_fn=keep_numpy, prefetch_factor=run.data.prefetch_steps,
                                         multiprocessing_context="fork")
    total, history = run.train.steps, []
    window_start = time.time()
    for item in loader:
        step, task_name = item["step"], item["task"]
        batches = [TASKS[task_name].collate(b, torch.device("cpu")) for b in item["batches"]]
        set_learning_rate(optimizer, learning_rate(step, total_steps=total, peak=run.optim.lr,
                                                   warmup_steps=run.optim.warmup_steps,
                                                   min_ratio=run.optim.min_lr_ratio))
        outcome = train_step(task_name, batches)
        if outcome.finite:
            float(outcome.loss)
        if (step + 1) % run.train.log_every == 0 or step + 1 == total:
            now = time.time()
            history.append({"step": step + 1, "steps_per_s": (step + 1 - (history[-1]["step"] if history else 0))
                            / max(now - window_start, 1e-9)})
            window_start = now
    if rank == 0:
        Path(out).write_text(json.dumps(history))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bare_step_s(run, data_root: Path, out: Path) -> tuple[float, list[dict]]:
    import torch.multiprocessing

    from pipelines.data.stream_spec import StreamSpec

    history_file = out / "bare_history.json"
    torch.multiprocessing.spawn(_bare_worker, nprocs=run.scale.num_workers, join=True, args=(
        run.scale.num_workers, _free_port(), StreamSpec.of(run, data_root), str(history_file)))
    history = json.loads(history_file.read_text())
    return steady_step_s(history, run.train.log_every), history


def run(data_root: str | Path, *, steps: int = 60, log_every: int = 10, rounds: int = 1, workers: int = 2) -> dict:
    """Ray must be running (2 CPUs: the workers take 0.5 each, the stream's loaders 0.5 each)."""
    data_root = Path(data_root).resolve()
    train_run = bench_run(data_root, steps, log_every, workers)
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    histories: dict[str, list] = {"ours": [], "baseline": []}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(rounds):
            for name, measure in (("ours", ray_train_step_s), ("baseline", bare_step_s)):
                folder = Path(scratch) / f"{name}{index}"
                folder.mkdir()
                step_s, history = measure(train_run, data_root, folder)
                times[name].append(step_s)
                histories[name].append(history)
    ours, baseline = statistics.median(times["ours"]) * 1e3, statistics.median(times["baseline"]) * 1e3
    return result(KEY, measure=MEASURE, ours=ours, baseline=baseline, ratio=ours / baseline, goal=GOAL,
                  unit="ms/step", details={
                      "rounds_step_ms": {k: [v * 1e3 for v in vs] for k, vs in times.items()},
                      "histories": histories, "steps": steps, "log_every": log_every, "workers": workers,
                      "note": f"default run (tiny, 5 tasks, batch 8) × {workers} workers, {steps} steps, first "
                              f"{log_every} untimed; baseline: {workers} processes, gloo DDP, DataLoader; "
                              f"median of {rounds} alternating rounds"})


def training_benchmark_main(run_fn, description: str, argv: list[str] | None = None, *, rounds: int = 1) -> None:
    """The command line of a benchmark that trains the default run on a local Ray of 2 CPUs: ``run_fn(data_root,
    steps=, log_every=, rounds=)`` → a result row, printed with its rounds."""
    import ray

    from benchmarks.run_inputs import embedded_data
    from pipelines.run import ray_runtime

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", help="converted data folder (default: the embedded default data)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args(argv)
    data_root = args.data or embedded_data()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})
    with contextlib.ExitStack() as stack:
        stack.callback(ray.shutdown)
        row = run_fn(data_root, steps=args.steps, log_every=args.log_every, rounds=args.rounds)
    print({k: v for k, v in row.items() if k != "details"}, row["details"]["rounds_step_ms"])


def main(argv: list[str] | None = None) -> None:
    training_benchmark_main(run, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main()
