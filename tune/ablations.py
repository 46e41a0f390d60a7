"""Reproduce the paper's ablations (Tables 2–5) and measure task interference, on your data or the embedded one.

    python tune/ablations.py --out ablations/tiny             # tiny preset, embedded data, 2 seeds (~70 min, 2 cores)
    python tune/ablations.py --smoke --out ablations/smoke    # two variants, a few steps (the tests run this)
    python tune/ablations.py --out ablations/tiny --variants full,tokens-global,tokens-regional   # one table
    python tune/ablations.py --out ablations/tiny --backbone-file in1k=/weights/convnext_atto.safetensors
    python tune/ablations.py --config my_run.yaml --seeds 3 --out /mnt/shared/ablations \\
        scale.num_workers=8 train.steps=20000                 # any run config, on a cluster
    python tune/ablations.py --out ablations/tiny             # re-run: finished trials are reused, the rest run;
                                                              # a trial whose config changed trains again
    python tune/ablations.py --out ablations/tiny --max-images 100   # finished trials are only re-evaluated

Every variant (``tune/ablation_variants.py``) is the base run config (``tune/configs/ablations.yaml``) with a
few fields changed; each variant × seed is one Ray Tune trial (a grid, as many at once as the cluster holds)
that trains with the project's TorchTrainer and evaluates on the validation split (``tune/trial.py``).
Stage 1 (``pipelines/pretrain.py``) runs once first, on the driver: every variant starts from its encoders unless
it sets one back to random. Variants initialized from another variant's backbone (the ``+ detection`` row: the
single-task detection run's) run in a second grid.
Then, in this process and at learning rate 0, the per-task gradients of the decoder FFN weights of the
all-task models with and without MoE give the normalized gradient-effect matrix (``tune/ablation_interference.py``).

Writes into ``--out``: ``report.md`` (every table, the direction checks against the paper, the interference
matrices, wall times), ``table_<name>.md/.csv/.png``, ``trials.csv`` (one row per trial), ``interference.md/
.csv/.png``, ``interference.json``, ``summary.json``; ``trials/<variant>-seed<k>/`` are the run folders.
Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == REPO / "tune":
    sys.path[0] = str(REPO)  # run as a script: import the packages, not this folder's modules as top-level ones

from pipelines.run import ray_runtime  # noqa: E402  (sets Ray's environment before ray is imported)
from pipelines.run.prepare import resolve_data  # noqa: E402
from tune import ablation_report as report  # noqa: E402
from tune.ablation_chance import chance_levels  # noqa: E402
from tune.ablation_interference import InterferenceSettings, measure_interference  # noqa: E402
from tune.ablation_variants import (FULL, AblationPlan, Variant, build_plan, variant_overrides,  # noqa: E402
                                   variant_tasks)
from tune.objective import task_scores  # noqa: E402
from tune.trial import EvaluationSettings, TrialSetup, train_and_evaluate  # noqa: E402
from unip2 import config_io  # noqa: E402
from unip2.config_io import ConfigError  # noqa: E402
from unip2.persistence import export_backbone  # noqa: E402
from unip2.run_config import RunConfig, load_run_config  # noqa: E402

DEFAULT_CONFIG = REPO / "tune" / "configs" / "ablations.yaml"
SMOKE_VARIANTS = [FULL, "all-no_moe"]
SMOKE_RUN = ["pretrain.encoders=[]", "model.proposals.num_queries=12", "train.steps=6", "train.checkpoint_every=6", "train.log_every=3",
             "optim.warmup_steps=2", "scale.num_workers=1", "scale.cpus_per_worker=0.25", "data.loader_cpus=0.1"]
"""``--smoke`` overrides (then every task's batch size is 2): each trial trains in seconds."""
INTERFERENCE_MODELS = {"without MoE": "all-no_moe", "with MoE": FULL}


@dataclass
class AblationSpec:
    config_path: str
    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    variants: list[str] | None = None
    backbone_files: dict[str, str] = field(default_factory=dict)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    """The whole validation split by default: a class-folder split's first rows hold only its first classes."""
    interference: InterferenceSettings | None = field(default_factory=InterferenceSettings)
    concurrency: int | None = None
    address: str | None = None


@dataclass
class TrialContext:
    """What every ablation trial shares (passed to the Tune trainable)."""

    out: str
    cwd: str
    spec: AblationSpec
    variants: dict[str, Variant]


def trial_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def run_dir(out: str | Path, variant: str, seed: int) -> Path:
    return Path(out) / "trials" / trial_name(variant, seed)


def final_checkpoint(folder: Path) -> Path:
    """The saved model (``unip2.save`` folder) of a trained trial: the last checkpoint in its Train storage."""
    found = sorted((folder / "ray").glob("*/checkpoint_*/model"))
    if not found:
        raise FileNotFoundError(f"no checkpoint under {folder / 'ray'}")
    return found[-1]


def trial_overrides(context: TrialContext, variant_name: str, seed: int, base: RunConfig) -> list[str]:
    """The overrides of one trial's run: the sweep's, then the variant's (a backbone comes from its trial folder)."""
    variant = context.variants[variant_name]
    backbone = None
    if variant.backbone_from is not None:
        backbone = str(run_dir(context.out, variant.backbone_from, seed) / "backbone.safetensors")
    return [*context.spec.overrides, *variant_overrides(variant, base, seed=seed, backbone_path=backbone)]


def changed_fields(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields ``wanted`` sets otherwise than ``saved``. Fields the run fills in itself
    (a None or empty value asked for: data root, class names, run folder) are not compared."""
    changed = []
    for key, value in wanted.items():
        name = f"{prefix}{key}"
        if (key == "out" and not prefix) or value is None or value == {} or value == []:
            continue
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            changed += changed_fields(saved[key], value, name + ".")
        elif saved.get(key) != value:
            changed.append(name)
    return changed


def stale_training(context: TrialContext, variant_name: str, seed: int, base: RunConfig) -> list[str]:
    """The fields in which a finished trial's saved run config differs from what its variant resolves to now
    (the variant or the base config changed since it trained): such a trial trains again."""
    folder = run_dir(context.out, variant_name, seed)
    saved = folder / "run_config.yaml"
    if not saved.is_file():
        return []
    wanted = load_run_config(context.spec.config_path, trial_overrides(context, variant_name, seed, base))
    changed = changed_fields(config_io.to_dict(load_run_config(saved)), config_io.to_dict(wanted))
    backbone = wanted.model.backbone.pretrained_path
    source = context.variants[variant_name].backbone_from
    if source is not None and Path(backbone).is_file() and Path(backbone).stat().st_mtime > saved.stat().st_mtime:
        changed.append("model.backbone.pretrained_path (its source trial trained again)")
    return changed


def evaluated_otherwise(folder: Path, evaluation: EvaluationSettings) -> bool:
    """The finished trial in ``folder`` was evaluated with other settings than ``evaluation``."""
    return json.loads((folder / "trial.json").read_text()).get("evaluation_settings") != asdict(evaluation)


def needs_work(context: TrialContext, variant: str, seed: int, base: RunConfig) -> bool:
    """The trial has not finished, trained another config than its variant's now, or was evaluated with
    other settings."""
    folder = run_dir(context.out, variant, seed)
    if not (folder / "trial.json").is_file() or stale_training(context, variant, seed, base):
        return True
    return evaluated_otherwise(folder, context.spec.evaluation)


def set_aside(folder: Path, changed: list[str]) -> Path:
    """Move a stale trial folder to ``<out>/replaced/`` (kept, not deleted) so that the trial trains afresh."""
    target = folder.parent.parent / "replaced" / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    print(f"[ablations] {folder.name}: trained with other {', '.join(changed)} than its variant now; "
          f"retraining (old run kept in {target})", flush=True)
    return target


def reevaluate(folder: Path, evaluation: EvaluationSettings) -> None:
    """Evaluate a finished trial's model again with ``evaluation`` (no training); updates ``trial.json``."""
    from pipelines.evaluation.pipeline import evaluate

    started = time.time()
    run = load_run_config(folder / "run_config.yaml")
    metrics = evaluate(final_checkpoint(folder), run.data.root, split=evaluation.split, tasks=list(run.tasks),
                       out_dir=folder / "evaluation", max_images=evaluation.max_images, meteor=evaluation.meteor,
                       num_cpus=evaluation.num_cpus, batch_size=evaluation.batch_size,
                       precision=run.train.precision)
    measured = json.loads((folder / "trial.json").read_text())
    measured |= {"scores": task_scores(metrics, list(run.tasks)), "eval_s": time.time() - started,
                 "evaluation_settings": asdict(evaluation)}
    (folder / "trial.json").write_text(json.dumps(measured, indent=2))


def run_variant(context: TrialContext, variant_name: str, seed: int) -> dict:
    """Train and evaluate one variant × seed (or reuse the finished run, re-evaluated if the evaluation
    settings changed) → its trial row."""
    spec = context.spec
    folder = run_dir(context.out, variant_name, seed)
    base = load_run_config(spec.config_path, spec.overrides)
    started = time.time()
    changed = stale_training(context, variant_name, seed, base)
    if changed:
        set_aside(folder, changed)
    if (folder / "trial.json").is_file():
        if evaluated_otherwise(folder, spec.evaluation):
            reevaluate(folder, spec.evaluation)
    else:
        setup = TrialSetup(sweep_dir=context.out, cwd=context.cwd, config_path=spec.config_path,
                           overrides=trial_overrides(context, variant_name, seed, base),
                           evaluation=spec.evaluation)
        measured = train_and_evaluate(setup, {}, folder)
        measured |= {"trial_wall_s": time.time() - started, "evaluation_settings": asdict(spec.evaluation)}
        (folder / "trial.json").write_text(json.dumps(measured, indent=2))
    return trial_row(folder, variant_name, seed)


def trial_row(folder: Path, variant: str, seed: int) -> dict:
    """{"variant", "seed", "status", "<task>/<metric>" for every numeric metric, times, "run_dir"}."""
    row = {"variant": variant, "seed": seed, "run_dir": str(folder)}
    trial, metrics = folder / "trial.json", folder / "evaluation" / "metrics.json"
    if not (trial.is_file() and metrics.is_file()):
        return row | {"status": "error"}
    measured, evaluation = json.loads(trial.read_text()), json.loads(metrics.read_text())
    row |= {key: measured.get(key) for key in ("train_s", "eval_s", "trial_wall_s")}
    for task, values in evaluation.items():
        if isinstance(values, dict):
            row |= {f"{task}/{k}": float(v) for k, v in values.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return row | {"status": "completed"}


def ablation_trial(config: dict, *, context: TrialContext) -> None:
    """The Tune trainable: one variant × seed."""
    import ray.tune

    os.chdir(context.cwd)
    row = run_variant(context, config["variant"], int(config["seed"]))
    shown = report.shown_keys()
    ray.tune.report({k: v for k, v in row.items() if k in shown or k.endswith("_s")})


def run_grid(context: TrialContext, names: list[str], base: RunConfig, phase: str) -> float:
    """Every variant of ``names`` × seed as a Ray Tune grid; returns its wall time."""
    import ray.tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tune import orphaned_groups
    from tune.tuner import SweepSettings, free_resources, trial_concurrency

    pending = [n for n in names if any(needs_work(context, n, s, base) for s in context.spec.seeds)]
    if not pending:
        return 0.0
    trials = len(pending) * len(context.spec.seeds)
    settings = SweepSettings(samples=trials, concurrency=context.spec.concurrency,
                             evaluation=context.spec.evaluation)
    concurrency = trial_concurrency(base, settings, free_resources())
    print(f"[ablations] {phase}: {trials} trials ({len(pending)} variants × {len(context.spec.seeds)} seeds), "
          f"{concurrency} at a time", flush=True)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(ablation_trial, context=context),
                                        {"CPU": settings.trial_cpus})
    started = time.time()
    tuner = ray.tune.Tuner(
        trainable,
        param_space={"variant": ray.tune.grid_search(pending), "seed": ray.tune.grid_search(context.spec.seeds)},
        tune_config=ray.tune.TuneConfig(search_alg=BasicVariantGenerator(max_concurrent=concurrency)),
        run_config=ray.tune.RunConfig(name=f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(Path(context.out) / "tune"), verbose=1,
                                      failure_config=ray.tune.FailureConfig(max_failures=1),
                                      callbacks=[orphaned_groups.OrphanedGroupSweeper()]))
    before = orphaned_groups.live_actor_groups()
    tuner.fit()
    orphaned_groups.settle(before)
    return time.time() - started


def export_backbones(context: TrialContext, plan: AblationPlan) -> None:
    """The backbone of every trial another variant is initialized from, as a weights file."""
    for variant in plan.variants.values():
        if variant.backbone_from is None:
            continue
        for seed in context.spec.seeds:
            folder = run_dir(context.out, variant.backbone_from, seed)
            path = folder / "backbone.safetensors"
            if not path.is_file():
                export_backbone(final_checkpoint(folder), path)


def run_interference(context: TrialContext, base: RunConfig) -> dict[str, list[dict]]:
    """δ of the all-task models without and with MoE, one matrix per seed (models that were trained)."""
    settings, results = context.spec.interference, {}
    for setting, variant in INTERFERENCE_MODELS.items():
        results[setting] = []
        if variant not in context.variants:
            continue
        for seed in context.spec.seeds:
            folder = run_dir(context.out, variant, seed)
            try:
                checkpoint = final_checkpoint(folder)
            except FileNotFoundError:
                continue
            run = load_run_config(folder / "run_config.yaml")
            measured = measure_interference(checkpoint, run.data.root, variant_tasks(context.variants[variant], base),
                                            InterferenceSettings(**{**settings.__dict__, "seed": seed}))
            results[setting].append(measured | {"seed": seed, "variant": variant})
    return results


def write_outputs(out: Path, plan: AblationPlan, rows: list[dict], base: RunConfig,
                  interference: dict[str, list[dict]] | None, summary: dict) -> dict[str, Path]:
    tasks = list(base.tasks)
    cols = report.columns(tasks)
    claims = report.paper_claims(set(plan.variants), tasks)
    files = {"trials": report.write_trial_csv(rows, cols, out / "trials.csv")}
    sections = [f"# Ablations of unip2 (paper Tables 2–5) on {summary['data']}", "",
                f"Base run: `{summary['config']}` {' '.join(f'`{o}`' for o in summary['overrides'])}; "
                f"seeds {summary['seeds']}; evaluation on the validation split "
                f"({'first ' + str(summary['max_images']) if summary['max_images'] else 'all'} images per dataset). "
                "Numbers ×100, mean ± sample sd over seeds. Each table's last row is the chance level: the score of "
                "answering every validation image with what a random training example shows (its label, caption or "
                "objects; a random ranking for retrieval), and under it each column's lowest row as a multiple of it. "
                "Measured on other data, model size and budget than the paper's: compare directions, not values.",
                ""]
    chance = summary.get("chance")
    for table in plan.tables:
        markdown = report.table_markdown(table, rows, cols, chance)
        checks = report.claims_markdown(claims, rows, cols, table.key)
        (out / f"table_{table.key}.md").write_text(markdown + ("\n" + checks if checks else ""))
        files[f"table_{table.key}"] = report.write_table_csv(table, rows, cols, out / f"table_{table.key}.csv")
        files[f"plot_{table.key}"] = report.plot_table(table, rows, cols, out / f"table_{table.key}.png", chance)
        sections += [markdown, f"![{table.key}](table_{table.key}.png)", ""]
        if checks:
            sections += [report.checks_heading(claims, table.key), "", checks]
    if interference is not None and any(interference.values()):
        (out / "interference.json").write_text(json.dumps(interference, indent=2))
        markdown = report.interference_markdown(interference)
        (out / "interference.md").write_text(markdown)
        files["interference_csv"] = report.write_interference_csv(interference, out / "interference.csv")
        files["interference_plot"] = report.plot_interference(interference, out / "interference.png")
        sections += ["### Task interference (normalized gradient effect δ, learning rate 0)", "", markdown,
                     "![interference](interference.png)", ""]
        check = report.interference_check(interference)
        if check:
            sections += ["Direction check against the paper:", "", check]
    sections += ["### Wall time", "",
                 f"total {summary['wall_s'] / 60:.1f} min: grids {summary['grid_s'] / 60:.1f} min "
                 f"({summary['completed']} of {summary['trials']} trials completed, sum of trial times "
                 f"{summary['sum_trial_s'] / 60:.1f} min), interference {summary['interference_s']:.0f} s.", ""]
    files["report"] = out / "report.md"
    files["report"].write_text("\n".join(sections))
    files["summary"] = out / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2))
    return files


def run_ablations(spec: AblationSpec, out: str | Path) -> dict[str, Path]:
    """Train every variant × seed, measure interference, write the outputs into ``out``."""
    started = time.time()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = load_run_config(spec.config_path, spec.overrides)
    plan = build_plan(list(base.tasks), backbone_files=spec.backbone_files, only=spec.variants)
    for variant in plan.variants.values():  # refuse a bad variant before any training
        load_run_config(spec.config_path, [*spec.overrides, *variant_overrides(variant, base, seed=0,
                                                                                 backbone_path="/dev/null")])
    ray_runtime.connect(spec.address or base.scale.address)
    from pipelines.stage1.encoders import pretrained_overrides

    # Stage 1 once for every variant (cached): their encoders start from it unless a variant names its own.
    spec.overrides = [*spec.overrides, *pretrained_overrides(spec.config_path, spec.overrides, out / "stage1")]
    base = load_run_config(spec.config_path, spec.overrides)
    context = TrialContext(out=str(out), cwd=str(Path.cwd()), spec=spec, variants=plan.variants)
    first = [n for n, v in plan.variants.items() if v.backbone_from is None]
    second = [n for n, v in plan.variants.items() if v.backbone_from is not None]
    grid_s = run_grid(context, first, base, "phase1")
    if second:
        export_backbones(context, plan)
        grid_s += run_grid(context, second, base, "phase2")
    rows = [trial_row(run_dir(out, name, seed), name, seed) for name in plan.variants for seed in spec.seeds]
    chance = chance_levels(resolve_data(base)[0], list(base.tasks), split=spec.evaluation.split,
                           max_images=spec.evaluation.max_images)
    interference_started = time.time()
    interference = run_interference(context, base) if spec.interference is not None else None
    summary = {"config": spec.config_path, "overrides": spec.overrides, "seeds": spec.seeds,
               "data": _data_name(base), "max_images": spec.evaluation.max_images,
               "variants": list(plan.variants), "trials": len(rows),
               "completed": sum(r["status"] == "completed" for r in rows),
               "sum_trial_s": sum(r.get("trial_wall_s") or 0.0 for r in rows), "grid_s": grid_s,
               "interference_s": time.time() - interference_started, "chance": chance}
    summary["wall_s"] = time.time() - started
    return write_outputs(out, plan, rows, base, interference, summary)


def _data_name(base: RunConfig) -> str:
    return "the embedded shapes-world data" if base.data.root is None else f"`{base.data.root}`"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default: ablations/<timestamp>); re-running reuses its trials")
    parser.add_argument("--config", help=f"base run config YAML (default: {DEFAULT_CONFIG.relative_to(REPO)})")
    parser.add_argument("--seeds", type=int, help="seeds per variant (default 2; 1 with --smoke)")
    parser.add_argument("--variants", help="comma-separated variant names to train (default: all four tables)")
    parser.add_argument("--backbone-file", action="append", default=[], metavar="LABEL=PATH",
                        help="a local backbone weights file: one more row of the initialization table")
    parser.add_argument("--max-images", type=int, help="first N validation images per dataset (default: all; 8 with "
                        "--smoke); finished trials evaluated otherwise are re-evaluated")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: as many as the cluster holds)")
    parser.add_argument("--interference-batches", type=int, help="batches per task for δ (default 8; 0 = skip)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--smoke", action="store_true", help=f"variants {', '.join(SMOKE_VARIANTS)}, a few steps")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the base run config")
    return parser.parse_args(argv)


def build_spec(args: argparse.Namespace) -> AblationSpec:
    config_path = str(Path(args.config).resolve()) if args.config else str(DEFAULT_CONFIG)
    spec = AblationSpec(config_path=config_path, overrides=list(args.overrides), address=args.address,
                        concurrency=args.concurrency)
    for item in args.backbone_file:
        label, sep, path = item.partition("=")
        if not sep or not label or not Path(path).is_file():
            raise ValueError(f"--backbone-file {item!r}: expected LABEL=PATH of an existing file")
        spec.backbone_files[label] = str(Path(path).resolve())
    if args.smoke:
        tasks = load_run_config(config_path, spec.overrides).tasks
        spec.overrides = SMOKE_RUN + [f"tasks.{name}.batch_size=2" for name in tasks] + spec.overrides
        spec.seeds, spec.variants = [0], list(SMOKE_VARIANTS)
        spec.evaluation = EvaluationSettings(max_images=8, num_cpus=0.1, batch_size=8)
        spec.interference = InterferenceSettings(batches=2, batch_size=2)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError("--seeds must be >= 1")
        spec.seeds = list(range(args.seeds))
    if args.variants:
        spec.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.max_images is not None:
        spec.evaluation.max_images = args.max_images
    if args.interference_batches is not None:
        spec.interference = (None if args.interference_batches == 0 else
                             InterferenceSettings(**{**spec.interference.__dict__, "batches": args.interference_batches}))
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or Path("ablations") / time.strftime("%Y%m%d-%H%M%S"))
    try:
        spec = build_spec(args)
        files = run_ablations(spec, out)
    except (ConfigError, ValueError, KeyError, FileNotFoundError) as err:  # refused at start, naming the field
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(files["report"].read_text(), flush=True)
    summary = json.loads(files["summary"].read_text())
    print(f"[ablations] {summary['completed']} of {summary['trials']} trials completed in "
          f"{summary['wall_s'] / 60:.1f} min; report: {files['report']}", flush=True)
    return 0 if summary["completed"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
