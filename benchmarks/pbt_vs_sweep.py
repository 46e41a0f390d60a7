"""Population Based Training against the fixed-value sweep at equal compute, on the default recipe.

    python benchmarks/pbt_vs_sweep.py --out bench/pbt_vs_sweep            # 2 + 2 runs of 300 steps on 2 cores
    python benchmarks/pbt_vs_sweep.py --out bench/big --population 4 --steps 1500 --interval 250   # (4+ CPUs)

Runs ``tune/sweep.py`` with P trials and ``tune/pbt.py`` with P members, each on the default recipe with
``--steps`` steps (one small Train worker per run, two runs at once on a 2-core machine); each has its own
uniform run besides (ω = s = 1), so both spend P + 1 runs. Then trains each one's ``best.yaml`` again with two
seeds, evaluates every one on the validation split and writes, side by side: the objective (relative to the
sweep's uniform run, the same reference for both), each task's headline metric, and the wall time of each search,
as ``pbt_vs_sweep.json`` and ``pbt_vs_sweep.md`` in ``--out`` (docs/tuning.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.run import ray_runtime  # noqa: E402,F401  (sets Ray's environment before ray is imported)

ONE_WORKER = ["scale.num_workers=1", "scale.cpus_per_worker=0.25", "data.loader_cpus=0.1", "train.log_every=50"]
"""Each run on one small Train worker: two runs at once on 2 cores (one CPU stays free for Ray Data), as PBT needs
its whole population training together; the sweep runs as many at once."""


def search(kind: str, out: Path, *, population: int, steps: int, interval: int, extra: list[str]) -> dict:
    """Run the sweep or the population into ``out`` → {"best": best.yaml, "wall_s"}."""
    from tune import pbt, sweep

    started = time.time()
    common = [*ONE_WORKER, f"train.steps={steps}", f"train.checkpoint_every={interval}", *extra]
    if kind == "sweep":
        code = sweep.main(["--out", str(out), "--samples", str(population), "--concurrency", str(population),
                           *common])
    else:
        code = pbt.main(["--out", str(out), "--population", str(population), "--interval", str(interval),
                         *common])
    if code != 0:
        raise RuntimeError(f"{kind} exited with {code}")
    return {"best": str(out / "best.yaml"), "wall_s": time.time() - started}


def train_again(config: str, seed: int, out: Path) -> dict:
    """Train a ``best.yaml`` from step 0 with ``seed`` and evaluate it on the validation split → the metrics."""
    from pipelines.evaluation.pipeline import evaluate
    from pipelines.run.prepare import prepare_run
    from pipelines.training.checkpoints import export_model
    from pipelines.training.trainer import fit

    run, run_dir, data_root = prepare_run(config, [f"train.seed={seed}", "train.validate_every=0",
                                                   "logging.tensorboard=false"], out=str(out))
    checkpoint = fit(run, out=run_dir, data_root=data_root)
    model = export_model(checkpoint, run_dir / "checkpoint")
    return evaluate(model, data_root, split="val", tasks=list(run.tasks), out_dir=run_dir / "evaluation",
                    meteor=False, in_process=True, num_cpus=2, precision=run.train.precision, figures=False)


def compare(out: Path, *, population: int, steps: int, interval: int, seeds: list[int], extra: list[str]) -> dict:
    from tune.objective import relative_objective, task_scores

    searches = {kind: search(kind, out / kind, population=population, steps=steps, interval=interval, extra=extra)
                for kind in ("sweep", "pbt")}
    reference = json.loads((out / "sweep" / "baseline.json").read_text())["scores"]
    table = {}
    for kind, found in searches.items():
        runs = []
        for seed in seeds:
            evaluation = train_again(found["best"], seed, out / f"{kind}_best_seed{seed}")
            scores = task_scores(evaluation, [key.split("/")[0] for key in reference])
            runs.append({"seed": seed, "objective": relative_objective(scores, reference), **scores})
        table[kind] = {"search_wall_s": found["wall_s"], "runs": runs,
                       "mean": {key: statistics.mean(run[key] for run in runs) for key in runs[0] if key != "seed"}}
    result = {"population": population, "steps": steps, "interval": interval, "seeds": seeds, "extra": extra,
              "reference": reference, "table": table}
    (out / "pbt_vs_sweep.json").write_text(json.dumps(result, indent=2))
    (out / "pbt_vs_sweep.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    keys = ["objective", *result["reference"]]
    lines = [f"P = {result['population']} runs of {result['steps']} steps each (PBT interval {result['interval']}), "
             f"best of each trained again with seeds {result['seeds']} and evaluated on the validation split; "
             "the objective is relative to the sweep's uniform run.", "",
             "| search | search wall time | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for kind, entry in result["table"].items():
        for run in entry["runs"]:
            lines.append(f"| {kind} best, seed {run['seed']} | {entry['search_wall_s'] / 60:.1f} min | "
                         + " | ".join(f"{run[key]:.3f}" for key in keys) + " |")
        lines.append(f"| **{kind} mean** | | " + " | ".join(f"**{entry['mean'][key]:.3f}**" for key in keys) + " |")
    lines.append("| uniform (ω = s = 1) | | 1.000 | " + " | ".join(f"{v:.3f}" for v in result["reference"].values())
                 + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--population", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--interval", type=int, default=75)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides of both searches")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ray_runtime.connect(None)
    result = compare(out, population=args.population, steps=args.steps, interval=args.interval,
                     seeds=[int(s) for s in args.seeds.split(",")], extra=list(args.overrides))
    print((out / "pbt_vs_sweep.md").read_text(), flush=True)
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
