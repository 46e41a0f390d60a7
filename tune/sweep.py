"""Sweep the task weights ω_k, the sampling weights s_k and the learning rate with Ray Tune.

    python tune/sweep.py --smoke --out sweeps/smoke                       # 2 trials, tiny preset, minutes on 2 cores
    python tune/sweep.py --smoke --samples 8 --out sweeps/tiny train.steps=200 train.checkpoint_every=50  # 2 cores
    python tune/sweep.py --out sweeps/default --samples 16 train.steps=300   # the default run (4+ CPUs)
    python tune/sweep.py --config pipelines/configs/base.yaml --space tune/configs/search_space.yaml \\
        --samples 32 --out /mnt/shared/sweeps/base scale.num_workers=8 train.steps=20000   # GPU cluster
    python tune/sweep.py --out sweeps/tiny            # re-run an interrupted sweep (Ctrl+C, a lost driver): resumes
    python pipelines/train.py --config sweeps/tiny/best.yaml              # train the best trial's config

Each trial trains the run config with its own ω_k, s_k and learning rate (a TorchTrainer launched from a
Tune function trainable), evaluates the result on the validation split and reports every task's headline
metric and the objective: the mean over tasks of the metric relative to a baseline with ω = s = 1
(measured once per sweep, same budget). ASHA stops trials early on their training losses relative to
the baseline's at the same step. Writes into ``--out``: ``results.csv`` / ``results.md`` (one row per
trial), ``sweep.png`` (per-task metrics, Pareto set), ``best.yaml``, ``summary.json`` (wall time, Tune
overhead), and the sweep's state: ``sweep.yaml``, ``baseline.json``, ``trials/<id>/`` (run folders),
``tune/`` (Tune's experiment).
Run it from the repository root.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == REPO / "tune":
    sys.path[0] = str(REPO)  # run as a script: import the packages, not this folder's modules as top-level ones

from pipelines.run import ray_runtime  # noqa: E402,F401  (sets Ray's environment before ray is imported)
from tune.objective import OBJECTIVE  # noqa: E402
from tune.search_space import load_search_space  # noqa: E402
from tune.trial import EvaluationSettings  # noqa: E402
from tune.tuner import SweepSettings, SweepSpec, base_run, check_spec, run_sweep  # noqa: E402
from unip2.config_io import ConfigError  # noqa: E402

SMOKE_RUN = ["pretrain.encoders=[]", "model.image_size=64", "model.proposals.num_queries=12", "train.steps=8", "train.checkpoint_every=4",
             "train.log_every=4", "optim.warmup_steps=2", "scale.num_workers=1", "scale.cpus_per_worker=0.25",
             "scale.max_failures=0", "data.loader_cpus=0.1"]
"""``--smoke`` run overrides (then every task's batch size is 2): a trial trains in seconds on 2 cores."""


def smoke_overrides(config_path: str | None) -> list[str]:
    tasks = base_run(SweepSpec(config_path=config_path)).tasks
    return SMOKE_RUN + [f"tasks.{name}.batch_size=2" for name in tasks]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="sweep folder (default: sweeps/<timestamp>); an existing one is resumed")
    parser.add_argument("--config", help="base run config YAML (see pipelines/configs/)")
    parser.add_argument("--space", help="search-space YAML (default: tune/search_space.py's; see tune/configs/)")
    parser.add_argument("--samples", type=int, help="trials (default 8; 2 with --smoke)")
    parser.add_argument("--metric", default=OBJECTIVE,
                        help="what best.yaml maximizes: objective (default) or <task>/<metric>, e.g. retrieval/R@1")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: as many as the cluster holds)")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N validation images per dataset")
    parser.add_argument("--floor", type=float, help="δ of the objective's ratios (m + δ) / (b + δ); default 0.05")
    parser.add_argument("--time-budget", type=float, help="stop the sweep after this many seconds")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--smoke", action="store_true", help="2 trials of 8 steps on a tiny model (a few minutes)")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep the arguments ask for, checked (bad config, search space or metric raise)."""
    evaluation = EvaluationSettings(max_images=args.max_images)
    settings = SweepSettings(metric=args.metric, concurrency=args.concurrency, time_budget_s=args.time_budget,
                             evaluation=evaluation)
    if args.floor is not None:
        settings.floor = args.floor
    overrides = list(args.overrides)
    if args.smoke:
        overrides = smoke_overrides(args.config) + overrides
        settings.samples = 2
        evaluation.max_images = args.max_images or 8
        evaluation.num_cpus, evaluation.batch_size = 0.1, 8
    if args.samples is not None:
        settings.samples = args.samples
    config_path = str(Path(args.config).resolve()) if args.config else None  # trials read it from anywhere
    spec = SweepSpec(config_path=config_path, overrides=overrides, space=load_search_space(args.space),
                     settings=settings)
    check_spec(spec)
    return spec


def main(argv: list[str] | None = None, *, callbacks: list = ()) -> int:
    """The command line; ``callbacks``: extra Tune callbacks (tests interrupt a sweep with one)."""
    args = parse_args(argv)
    out = Path(args.out or Path("sweeps") / time.strftime("%Y%m%d-%H%M%S"))
    started = time.time()
    try:
        if (out / "sweep.yaml").is_file():
            spec = None
            print(f"[sweep] resuming the sweep in {out} with its saved settings (sweep.yaml)", flush=True)
        else:
            spec = build_spec(args)
        outcome = run_sweep(spec, out, address=args.address, callbacks=list(callbacks))
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as err:  # refused at start, naming the field
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(outcome.files["md"].read_text(), flush=True)
    summary = outcome.summary
    print(f"[sweep] {summary['completed']} of {summary['trials']} trials completed, {summary['stopped_early']} stopped "
          f"early, {summary['errors']} failed; Tune loop {summary['sweep_wall_s']:.0f} s for "
          f"{summary['sum_trial_s']:.0f} s of trials ({summary['concurrency']} at a time); "
          f"total {time.time() - started:.0f} s", flush=True)
    print("[sweep] " + "; ".join(f"{kind}: {path}" for kind, path in outcome.files.items()), flush=True)
    if outcome.interrupted:
        print(f"[sweep] interrupted: run `python tune/sweep.py --out {out}` to resume", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
