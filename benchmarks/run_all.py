"""Every performance claim of the project, measured side by side with its baseline in one run.

    python benchmarks/run_all.py --quick --out /tmp/bench_quick          # ~10 minutes on 2 idle cores
    python benchmarks/run_all.py --out docs/bench                         # full sizes, the whole default run
    python benchmarks/run_all.py --only optimizer_ratio,flops_utilization --out /tmp/bench

Writes ``results.json`` (one figure per key, then every row's details and the run's settings) and
``results.md`` (the table: measure, ours, baseline, ratio, goal), after each benchmark so a partial run
keeps what it measured, and prints the table. Each benchmark runs the project's path and its baseline in
this process and run, alternating where it repeats, and reports a ratio: the machines are shared and
noisy. One local Ray (``--cpus``, 2 by default) is started for the benchmarks that need it; the default
run is timed last, in a subprocess with its own Ray, after this one is shut down. A benchmark that raises
is recorded as failed and the rest still run.

| key | what | goal |
|---|---|---|
| optimizer_ratio | MT-AdamW step / AdamW(foreach=True) step, tiny model | <= 1.3 |
| flops_utilization | fwd+bwd FLOP/s (FlopCounterMode) / matmul peak FLOP/s, both in the step's precision | >= 0.4 |
| data_ingest_ratio | Ray Data rows/s / DataLoader rows/s, same CPUs | >= 1.0 |
| train_overhead_ratio | Ray Train step (2 workers) / bare torch DDP step | <= 1.05 |
| bf16_step_speedup | the default run's Ray Train step in fp32 / in bf16 (`train.precision`) | >= 1.5 |
| serve_batching_gain | Serve req/s with dynamic batching / max_batch_size=1, 16 clients | >= 0.9 × the model's own gain |
| serve_overhead_ms | Serve p50 − direct call p50, 1 client | <= 5 |
| serve_throughput_ratio | Serve req/s, 16 clients / direct batched req/s, same images | >= 0.8 |
| serve_overhead_beyond_ray_serve_ms | Serve p50 − p50 of a Ray Serve app that reads the upload and computes as long as the model, 1 client | reported |
| tune_overhead_ratio | sweep wall time / sum of trial times | <= 1.10 |
| default_run_s, default_run_peak_mb | python pipelines/train.py wall time (stage 1 cached) and peak memory | <= 600 s; reported |
| default_run_top1, _box_ap, _mask_ap, _cider, _i2t_r1, _t2i_r1, _lm_accuracy | its validation metrics | >= 0.9, 0.5, 0.4, 1.5, 0.5, 0.5, 0.8 |
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.run import ray_runtime  # noqa: E402  (Ray's environment, before ray is imported)
from benchmarks import (data_ingest, default_run, flops, optimizer_step, precision_step,  # noqa: E402
                        serve_batching, train_overhead, tune_overhead)
from benchmarks.results_table import failed, markdown_table, write_results  # noqa: E402

# name → (keys it reports, needs our Ray, full sizes, --quick sizes)
JOBS = {
    "optimizer": ((optimizer_step.KEY,), False, dict(steps=10, rounds=25), dict(steps=10, rounds=11)),
    "flops": ((flops.KEY,), False, dict(rounds=5, steps=3), dict(rounds=2, steps=2)),
    "data_ingest": ((data_ingest.KEY,), True, dict(steps=200, rounds=3), dict(steps=80, rounds=1)),
    "train_overhead": ((train_overhead.KEY,), True, dict(steps=100, log_every=10, rounds=2),
                       dict(steps=40, log_every=10, rounds=1)),
    "precision": ((precision_step.KEY,), True, dict(steps=60, log_every=10, rounds=2),
                  dict(steps=40, log_every=10, rounds=1)),
    "serve": ((serve_batching.GAIN[0], serve_batching.OVERHEAD[0], serve_batching.THROUGHPUT[0],
               serve_batching.BEYOND_RAY_SERVE[0]), True,
              dict(requests=160), dict(requests=64)),
    "tune_overhead": ((tune_overhead.KEY,), True, dict(samples=4), dict(samples=2)),
    "default_run": ((default_run.WALL[0], default_run.WALL[0] + "_fresh", default_run.PEAK[0],
                     *(headline.benchmark_key for _, headline in default_run.goal_metrics())),
                    False, dict(steps=None),
                    dict(steps=100)),
}
MEASURES = {optimizer_step.KEY: (optimizer_step.MEASURE, optimizer_step.GOAL), flops.KEY: (flops.MEASURE, flops.GOAL),
            data_ingest.KEY: (data_ingest.MEASURE, data_ingest.GOAL),
            train_overhead.KEY: (train_overhead.MEASURE, train_overhead.GOAL),
            precision_step.KEY: (precision_step.MEASURE, precision_step.GOAL),
            serve_batching.GAIN[0]: serve_batching.GAIN[1:], serve_batching.OVERHEAD[0]: serve_batching.OVERHEAD[1:],
            serve_batching.THROUGHPUT[0]: serve_batching.THROUGHPUT[1:],
            serve_batching.BEYOND_RAY_SERVE[0]: serve_batching.BEYOND_RAY_SERVE[1:],
            tune_overhead.KEY: (tune_overhead.MEASURE, tune_overhead.GOAL),
            default_run.WALL[0]: default_run.WALL[1:], default_run.PEAK[0]: default_run.PEAK[1:],
            default_run.WALL[0] + "_fresh": (default_run.WALL[1] + " (stage 1 trained in it)", default_run.FRESH_GOAL),
            **{headline.benchmark_key: (headline.said, headline.default_run_goal)
               for _, headline in default_run.goal_metrics()}}


def call(name: str, sizes: dict, data_root: Path, cpus: int) -> list[dict]:
    """Run job ``name`` at ``sizes`` → its rows."""
    if name == "optimizer":
        return [optimizer_step.run(**sizes)]
    if name == "flops":
        return [flops.run(data_root, **sizes)]
    if name == "data_ingest":
        return [data_ingest.run(data_root, cpus=cpus, **sizes)]
    if name == "train_overhead":
        return [train_overhead.run(data_root, **sizes)]
    if name == "precision":
        return [precision_step.run(data_root, **sizes)]
    if name == "serve":
        return serve_batching.run(**sizes)
    if name == "tune_overhead":
        return [tune_overhead.run(**sizes)]
    if name == "default_run":
        return default_run.run(**sizes)
    raise KeyError(name)


def selected(only: str | None) -> list[str]:
    """Job names for ``--only`` (keys or job names, comma-separated), in run order."""
    if not only:
        return list(JOBS)
    wanted = {part.strip() for part in only.split(",") if part.strip()}
    unknown = wanted - set(JOBS) - {key for keys, *_ in JOBS.values() for key in keys}
    if unknown:
        raise SystemExit(f"error: --only: unknown {sorted(unknown)}; keys: "
                         f"{', '.join(k for keys, *_ in JOBS.values() for k in keys)}")
    return [name for name, (keys, *_) in JOBS.items() if name in wanted or wanted & set(keys)]


def start_ray(cpus: int) -> None:
    import ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": dict(ray_runtime.RAY_ENVIRONMENT)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for results.json and results.md")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~10 minutes on 2 idle cores)")
    parser.add_argument("--only", help="comma-separated keys or job names (optimizer, flops, data_ingest, "
                                       "train_overhead, precision, serve, tune_overhead, default_run)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (and DataLoader workers)")
    args = parser.parse_args(argv)
    jobs = selected(args.only)
    os.chdir(ROOT)  # the sweep and the default run resolve their folders from the repository root

    from benchmarks.run_inputs import embedded_data

    import ray

    started = time.time()
    data_root = embedded_data()
    meta = {"quick": args.quick, "cpus": args.cpus, "machine_cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_start": " ".join(f"{v:.1f}" for v in os.getloadavg()), "started": time.strftime("%F %T")}
    rows: list[dict] = []
    # Our Ray's benchmarks first, together; then the jobs that must not share the machine with it.
    order = [n for n in jobs if not JOBS[n][1] and n != "default_run"] + [n for n in jobs if JOBS[n][1]] + \
            [n for n in jobs if n == "default_run"]
    for name in order:
        keys, needs_ray, full, quick = JOBS[name]
        if needs_ray and not ray.is_initialized():
            start_ray(args.cpus)
        elif not needs_ray and ray.is_initialized():
            ray.shutdown()
        sizes = quick if args.quick else full
        print(f"[bench] {name} {sizes} ...", flush=True)
        job_start = time.time()
        try:
            new_rows = call(name, sizes, data_root, args.cpus)
        except Exception as err:  # noqa: BLE001  (record it, measure the rest)
            traceback.print_exc()
            new_rows = [failed(key, measure=MEASURES[key][0], goal=MEASURES[key][1], error=f"{type(err).__name__}: {err}")
                        for key in keys]
        for row in new_rows:
            row["details"]["job_s"] = time.time() - job_start
        rows += new_rows
        print(f"[bench] {name} done in {time.time() - job_start:.0f} s: "
              + ", ".join(f"{r['key']}={r['ratio']}" for r in new_rows), flush=True)
        meta.update(wall_s=round(time.time() - started, 1),
                    load_average_end=" ".join(f"{v:.1f}" for v in os.getloadavg()))
        write_results(rows, args.out, meta=meta)
    if ray.is_initialized():
        ray.shutdown()
    print("\n" + markdown_table(rows))
    print(f"\n[bench] {len(rows)} figures in {time.time() - started:.0f} s → {Path(args.out) / 'results.json'}, "
          f"{Path(args.out) / 'results.md'}", flush=True)
    return 1 if any("error" in row["details"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
