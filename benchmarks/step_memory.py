"""Peak memory and time of one training step per task (BASE, random weights, CPU by default): with and without
activation checkpointing, and captioning with 2,000 / 20,000 / all vocabulary rows as candidates.

    python benchmarks/step_memory.py --out step_memory.json       # BASE, base.yaml's tasks and image sizes, CPU
    python benchmarks/step_memory.py --tasks captioning --batches 2 --checkpointing off   # the full-vocabulary step
    python benchmarks/step_memory.py --preset tiny --tasks captioning --vocabulary 64 full --steps 1   # smoke
    python benchmarks/step_memory.py model.candidate_chunk_tokens=1000000     # candidates in one chunk (the old way)

Each measurement is one fresh process (``--one``), so its peak is its own: the task's real batch at the config's
image size (``benchmarks/gpu_step.py``'s synthetic rows, label spaces and vocabulary padded to ImageNet's 1,000,
COCO's 80 and RoBERTa's 50,265 rows), ``--steps`` training steps as the training loop takes them (collate,
forward + backward, MT-AdamW). Reported: the last step's time, the process's peak resident set (CPU; CUDA: peak
allocated) and its growth over the built model and batch. The cases: every task at every ``--batches`` size, with
and without ``train.activation_checkpointing``; then captioning at the largest batch with each ``--vocabulary``
size as its candidates (``vocabulary: training_captions`` with the first K token ids; ``full``: all of them).

From two batch sizes, each task's peak is fitted as fixed + per-sample × batch, and the per-device batch that
fits in 80 and 40 GiB is read off that line. The step runs in the config's ``train.precision`` (bf16 autocast where
the hardware has it; ``train.precision=fp32`` for fp32 activations, an upper bound on a bf16 GPU's).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAPACITIES_GIB = (80, 40)
DEFAULT_VOCABULARY = ("2000", "20000", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=("tiny", "base", "large"), help="model preset")
    parser.add_argument("--config", help="run config giving the tasks and image sizes (default: pipelines/configs/"
                                         "<preset>.yaml; default.yaml for tiny)")
    parser.add_argument("--tasks", nargs="+", help="tasks measured (default: the config's tasks)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="per-device batch sizes measured")
    parser.add_argument("--checkpointing", nargs="+", choices=("off", "on"), default=["off", "on"],
                        help="train.activation_checkpointing settings measured")
    parser.add_argument("--vocabulary", nargs="*", default=list(DEFAULT_VOCABULARY),
                        help="captioning candidate counts (or 'full'), at the largest batch, checkpointing off")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2, help="steps per measurement; the last one is timed")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--out", help="write the measurements as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case (JSON), measured in this process
    parser.add_argument("--data", help="a converted data folder to take the batches from (default: synthetic "
                                       "rows generated for the run)")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides for every case")
    return parser.parse_args(argv)


def cases(tasks: list[str], *, batches: list[int], checkpointing: list[str], vocabulary: list[str]) -> list[dict]:
    """What is measured: {"task", "batch", "checkpointing": bool, "vocabulary": None | K | "full"}, one process each."""
    grid = [{"task": task, "batch": batch, "checkpointing": mode == "on", "vocabulary": None}
            for task in tasks for mode in checkpointing for batch in sorted(batches)]
    from benchmarks.run_inputs import vocabulary_task

    restricted = vocabulary_task()
    covered = restricted in tasks and "off" in checkpointing  # the task grid's case uses the config's vocabulary
    sizes = [size for size in vocabulary if not (size == "full" and covered)]
    return grid + [{"task": restricted, "batch": max(batches), "checkpointing": False,
                    "vocabulary": size if size == "full" else int(size)} for size in sizes]


def measure_one(case: dict, *, preset: str, config: Path, data: Path, device: str, steps: int, threads: int,
                overrides: list[str]) -> dict:
    """One case in this process → {"step_s", "peak_gib", "growth_gib", "loss", ...}."""
    import torch

    from benchmarks.gpu_step import build, make_step, sync, task_batch
    from unip2.data.manifest import load_manifest
    from unip2.model.checkpointing import enable_activation_checkpointing
    from unip2.run_config import TaskRunConfig, load_run_config
    from unip2.training_setup import TaskLoss, optimizer_for
    from unip2.precision import autocast, resolve_precision
    from unip2.training_step import TrainingStep

    torch.set_num_threads(threads)
    device = torch.device(device)
    task = case["task"]
    run = load_run_config(config, [f"model.preset={preset}", *overrides])
    run.tasks.setdefault(task, TaskRunConfig()).batch_size = case["batch"]
    options = run.model.tasks[task]
    if case["vocabulary"] is not None:
        options.vocabulary = "full" if case["vocabulary"] == "full" else "training_captions"
        options.token_ids = [] if case["vocabulary"] == "full" else list(range(case["vocabulary"]))
    model = build(run, load_manifest(data)["class_names"], real_sizes=preset != "tiny").to(device).train()
    if case["checkpointing"]:
        enable_activation_checkpointing(model)
    np_batch = task_batch(task, run, data, model.tokenizer)
    precision = resolve_precision(run.train.precision, device)
    train_step = TrainingStep(loss_module=TaskLoss(model), optimizer=optimizer_for(model, run.optim),
                              omegas={task: 1.0}, ratios={task: 1.0}, autocast=autocast(precision, device))
    step = make_step(task, np_batch, train_step=train_step, device=device)
    before = current_bytes(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_bytes(device)
    from unip2.tasks import TASKS

    candidates = "vocabulary rows" if TASKS[task].candidate_family == "vocabulary" else "names"
    return {**case, "step_s": times[-1], "steps_s": times, "peak_gib": peak / 2**30,
            "growth_gib": (peak - before) / 2**30, "model_gib": before / 2**30, "loss": float(loss),
            "image_size": run.image_size(task), "candidates": f"{TASKS[task].candidate_count(model)} {candidates}",
            "chunk_tokens": run.model.candidate_chunk_tokens}


def peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def fits(points: list[dict]) -> dict[str, int | None]:
    """Largest batch whose peak (the line through the smallest and largest measured batch) fits each capacity."""
    if len(points) < 2:
        return {}
    low, high = min(points, key=lambda p: p["batch"]), max(points, key=lambda p: p["batch"])
    per_sample = (high["peak_gib"] - low["peak_gib"]) / (high["batch"] - low["batch"])
    fixed = low["peak_gib"] - per_sample * low["batch"]
    return {f"{capacity}GiB": (int((capacity - fixed) // per_sample) if per_sample > 0 else None)
            for capacity in CAPACITIES_GIB} | {"per_sample_gib": per_sample, "fixed_gib": fixed}


def run(*, preset: str = "base", config: str | None = None, tasks: list[str] | None = None,
        batches: list[int] = (1, 2), checkpointing: list[str] = ("off", "on"),
        vocabulary: list[str] = DEFAULT_VOCABULARY, device: str = "cpu", steps: int = 2, threads: int = 2,
        overrides: list[str] = (), data: str | None = None) -> dict:
    """Every case in a process of its own → {"header", "cases", "fits"}; ``data``: a converted data folder to
    take the batches from instead of freshly generated synthetic rows."""
    from benchmarks.gpu_step import CONFIG_OF_PRESET, synthetic_rows
    from unip2.run_config import load_run_config

    config = Path(config) if config else ROOT / "pipelines" / "configs" / CONFIG_OF_PRESET[preset]
    tasks = list(tasks or load_run_config(config, [f"model.preset={preset}", *overrides]).tasks)
    measured = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(data) if data else synthetic_rows(Path(folder))[0]
        for case in cases(tasks, batches=list(batches), checkpointing=list(checkpointing),
                          vocabulary=list(vocabulary)):
            done = subprocess.run([sys.executable, __file__, "--one", json.dumps(case), "--data", str(data),
                                   "--preset", preset, "--config", str(config), "--device", device,
                                   "--steps", str(steps), "--threads", str(threads), *overrides],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:  # e.g. out of memory: recorded, the others still run
                measured.append({**case, "error": done.stderr[-2000:] or f"exit status {done.returncode}"})
            else:
                measured.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(line(measured[-1]), flush=True)
    grid = [m for m in measured if m["vocabulary"] is None and "error" not in m]
    fitted = {f"{task} checkpointing={'on' if mode else 'off'}":
              fits([m for m in grid if m["task"] == task and m["checkpointing"] == mode])
              for task in tasks for mode in (False, True)}
    header = {"preset": preset, "config": str(config), "device": device, "threads": threads, "steps": steps,
              "overrides": list(overrides)}
    return {"header": header, "cases": measured, "fits": {k: v for k, v in fitted.items() if v}}


def line(case: dict) -> str:
    what = (f"{case['task']:22s} batch {case['batch']:2d} checkpointing {'on ' if case['checkpointing'] else 'off'}"
            + (f" vocabulary {case['vocabulary']}" if case["vocabulary"] is not None else ""))
    if "error" in case:
        return f"[step_memory] {what}: failed: {(case['error'].strip().splitlines() or [''])[-1]}"
    return (f"[step_memory] {what}: {case['step_s']:.1f} s/step, peak {case['peak_gib']:.2f} GiB "
            f"(+{case['growth_gib']:.2f} over the model), {case['candidates']}")


def table(results: dict) -> str:
    """Markdown: one row per case, then the fitted per-device batches."""
    rows = ["| task | image | batch | act. ckpt | candidates | s/step | peak GiB | over model GiB |",
            "|---|---|---|---|---|---|---|---|"]
    for c in results["cases"]:
        if "error" in c:
            rows.append(f"| {c['task']} | | {c['batch']} | {'on' if c['checkpointing'] else 'off'} | "
                        f"{c['vocabulary'] or ''} | failed | | |")
            continue
        rows.append(f"| {c['task']} | {c['image_size']} | {c['batch']} | {'on' if c['checkpointing'] else 'off'} | "
                    f"{c['candidates']} | {c['step_s']:.1f} | {c['peak_gib']:.2f} | {c['growth_gib']:.2f} |")
    if results["fits"]:
        rows += ["", "| task | fixed GiB | per sample GiB | batch at 80 GiB | batch at 40 GiB |",
                 "|---|---|---|---|---|"]
        rows += [f"| {key} | {f['fixed_gib']:.2f} | {f['per_sample_gib']:.3f} | {f['80GiB']} | {f['40GiB']} |"
                 for key, f in results["fits"].items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(json.loads(args.one), preset=args.preset, config=Path(args.config),
                                     data=Path(args.data), device=args.device, steps=args.steps,
                                     threads=args.threads, overrides=args.overrides)))
        return
    results = run(preset=args.preset, config=args.config, tasks=args.tasks, batches=args.batches,
                  checkpointing=args.checkpointing, vocabulary=args.vocabulary, device=args.device, steps=args.steps,
                  threads=args.threads, overrides=args.overrides, data=args.data)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
