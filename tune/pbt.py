"""Population Based Training of the task balance: ω_k, s_k and the learning rate learned while training.

    python tune/pbt.py --quick --out pbt/quick                   # 2 members of 8 steps, tiny model: minutes on 2 cores
    python tune/pbt.py --out pbt/default --population 4 --interval 250 train.steps=1500    # the default run
    python tune/pbt.py --config pipelines/configs/base.yaml --population 8 --interval 5000 \\
        --out /mnt/shared/pbt/base scale.num_workers=8                                         # a GPU cluster
    python tune/pbt.py --out pbt/default              # re-run an interrupted one (Ctrl+C, a lost driver): resumes
    python pipelines/train.py --config pbt/default/best.yaml    # train the best member's whole schedule again

A population of P runs of the same config, from the same stage-1 encoders (run once, cached), with ω_k, s_k and lr
drawn from the search space (``tune/search_space.py``). Every member validates every ``--interval`` steps
(``train.validate_every``) and reports the objective: the mean over tasks of its headline validation metric
relative to the uniform run's (ω = s = 1) at the same step (``tune.objective``; the uniform run is trained once,
``baseline.json``). Ray Tune's ``PopulationBasedTraining`` then lets the worst quantile copy a better member's
checkpoint (weights, optimizer, step, its schedule so far) and perturb its values (``--scheduler pb2``: PB2's
bandit instead of random perturbation, with the pb2 extra's GPy and scikit-learn). A member's values are a schedule
(``{step: value}`` pieces, ``unip2.schedules``) that replays exactly, so the best member's whole lineage trains
again from ``best.yaml``. Writes into ``--out``: ``best.yaml``, ``results.md`` / ``results.json`` (every member:
objective, each task's metric, its schedule), ``pbt.png`` (each member's ω_k, s_k, lr over steps, and the
objective), ``summary.json`` (wall time), and its state: ``pbt.yaml``, ``baseline.json``, ``members/``, ``tune/``.
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
from tune.population import PbtSettings, PbtSpec, check_pbt, run_pbt  # noqa: E402
from tune.search_space import load_search_space  # noqa: E402
from tune.sweep import smoke_overrides  # noqa: E402
from unip2.config_io import ConfigError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="PBT folder (default: pbt/<timestamp>); an existing one is resumed")
    parser.add_argument("--config", help="base run config YAML (see pipelines/configs/)")
    parser.add_argument("--space", help="search-space YAML (default: tune/search_space.py's; see tune/configs/)")
    parser.add_argument("--population", type=int, help="members (default 4; 2 with --quick)")
    parser.add_argument("--interval", type=int, help="steps between validations and perturbations "
                                                     "(default: train.steps / 4; must divide train.steps)")
    parser.add_argument("--scheduler", choices=("pbt", "pb2"), default="pbt", help="Ray Tune's PBT or PB2")
    parser.add_argument("--concurrency", type=int, help="members at once (default: as many as the cluster holds)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--quick", action="store_true", help="2 members of 8 steps on a tiny model, interval 4")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides, e.g. train.steps=600")
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> PbtSpec:
    settings = PbtSettings(scheduler=args.scheduler, concurrency=args.concurrency)
    overrides = list(args.overrides)
    if args.quick:
        overrides = smoke_overrides(args.config) + ["train.validation_rows=4"] + overrides
        settings.population, settings.interval = 2, 4
    if args.population is not None:
        settings.population = args.population
    if args.interval is not None:
        settings.interval = args.interval
    config_path = str(Path(args.config).resolve()) if args.config else None
    spec = PbtSpec(config_path=config_path, overrides=overrides, space=load_search_space(args.space),
                   settings=settings)
    check_pbt(spec)
    return spec


def main(argv: list[str] | None = None, *, callbacks: list = ()) -> int:
    """The command line; ``callbacks``: extra Tune callbacks (tests interrupt a run with one)."""
    args = parse_args(argv)
    out = Path(args.out or Path("pbt") / time.strftime("%Y%m%d-%H%M%S"))
    started = time.time()
    try:
        if (out / "pbt.yaml").is_file():
            spec = None
            print(f"[pbt] resuming the population in {out} with its saved settings (pbt.yaml)", flush=True)
        else:
            spec = build_spec(args)
        outcome = run_pbt(spec, out, address=args.address, callbacks=list(callbacks))
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as err:  # refused at start, naming the field
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(outcome.files["md"].read_text(), flush=True)
    print(f"[pbt] {outcome.summary['members']} members, best {outcome.summary['best']}; total "
          f"{time.time() - started:.0f} s", flush=True)
    print("[pbt] " + "; ".join(f"{kind}: {path}" for kind, path in outcome.files.items()), flush=True)
    if outcome.interrupted:
        print(f"[pbt] interrupted: run `python tune/pbt.py --out {out}` to resume", flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
