"""Running Population Based Training (``tune/pbt.py``): settings, the uniform baseline's validation curve, the
Tuner with Ray Tune's PBT (or PB2) scheduler, resume, and the output files (``tune.population_report``)."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ray
import ray.tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from pipelines.run import ray_runtime
from tune import orphaned_groups
from tune.last_step import LeavesTheLastStepAlone
from tune.objective import FLOOR, OBJECTIVE
from tune.pbt_member import STEP, MemberSetup, run_member, validation_scores
from tune.population_report import write_outputs
from tune.search_space import SearchSpace, param_space
from tune.tuner import SweepSettings, free_resources, trial_concurrency
from unip2 import config_io
from unip2.config_io import ConfigError, require
from unip2.run_config import RunConfig, load_run_config

EXPERIMENT = "tune"


@dataclass
class PbtSettings:
    """How the population trains (saved in ``pbt.yaml``, reused on resume)."""

    population: int = 4
    """Members trained side by side."""
    interval: int | None = None
    """Steps between validations and perturbations; None = train.steps / 4. Must divide train.steps."""
    scheduler: Literal["pbt", "pb2"] = "pbt"
    """``pbt``: random perturbation (×0.8 / ×1.2, or a new draw); ``pb2``: a GP bandit picks the new values."""
    quantile_fraction: float = 0.25
    """The bottom (and top) fraction of the population: the bottom copies the top at each interval."""
    resample_probability: float = 0.25
    """PBT: chance that a perturbed value is drawn anew from the search space instead of scaled."""
    concurrency: int | None = None
    """Members at once; None = as many as the cluster holds (one CPU kept free), at most the population."""
    trial_cpus: float = 0.1
    """CPUs of each member's driver function (it mostly waits on Train)."""
    max_failures: int = 1
    floor: float = FLOOR
    """δ of the relative objective (``tune.objective``)."""
    seed: int = 0
    """Seed of the initial draws."""

    def validate(self, prefix: str = "") -> None:
        require(self.population >= 2, prefix + "population", "must be >= 2 (members copy each other)")
        require(self.interval is None or self.interval > 0, prefix + "interval", "must be > 0")
        require(0 < self.quantile_fraction <= 0.5, prefix + "quantile_fraction", "must be in (0, 0.5]")
        require(0 <= self.resample_probability <= 1, prefix + "resample_probability", "must be in [0, 1]")
        require(self.concurrency is None or self.concurrency > 0, prefix + "concurrency", "must be > 0")
        require(self.trial_cpus > 0, prefix + "trial_cpus", "must be > 0")
        require(self.floor > 0, prefix + "floor", "must be > 0")


@dataclass
class PbtSpec:
    """Everything that defines a population: ``<out>/pbt.yaml``."""

    config_path: str | None = None
    overrides: list[str] = field(default_factory=list)
    space: SearchSpace = field(default_factory=SearchSpace)
    settings: PbtSettings = field(default_factory=PbtSettings)


@dataclass
class PbtOutcome:
    rows: list[dict]
    """Members ranked by their last objective."""
    files: dict[str, Path]
    summary: dict
    interrupted: bool


def interval_of(spec: PbtSpec, run: RunConfig) -> int:
    return spec.settings.interval or max(1, run.train.steps // 4)


def check_pbt(spec: PbtSpec) -> RunConfig:
    """Refuse a bad population before any Ray work; returns the base run config."""
    config_io.validate(spec.settings)
    config_io.validate(spec.space)
    run = load_run_config(spec.config_path, spec.overrides)
    require(run.scale.num_workers != "auto", "scale.num_workers",
            "members need a number (auto would give every member the whole cluster)")
    require(run.train.sampling == "unmixed", "train.sampling", "PBT copies checkpoints between members: unmixed only")
    interval = interval_of(spec, run)
    require(run.train.steps % interval == 0, "interval",
            f"{interval} does not divide train.steps={run.train.steps}: members validate at every interval's end")
    if spec.settings.scheduler == "pb2":
        try:
            import GPy  # noqa: F401
            import sklearn  # noqa: F401
        except ImportError:
            raise ConfigError("scheduler", "pb2 needs GPy and scikit-learn (pip install -e '.[pb2]'); "
                                           "pbt needs nothing more") from None
    param_space(spec.space, run)
    return run


def measure_baseline(spec: PbtSpec, out: Path, interval: int) -> dict:
    """The uniform run (ω = s = 1, the configured lr) with a validation every interval, trained once:
    ``baseline.json`` {"validation": {step: {``<task>/<metric>``: value}}, "wall_s"}."""
    path = out / "baseline.json"
    if path.is_file():
        return json.loads(path.read_text())
    from pipelines.run.prepare import prepare_run
    from pipelines.training.checkpoints import read_state
    from pipelines.training.trainer import fit

    started = time.time()
    run = load_run_config(spec.config_path, spec.overrides)
    uniform = [f"tasks.{name}.{key}=1.0" for name in run.tasks for key in ("omega", "sampling_weight")]
    run, run_dir, data_root = prepare_run(spec.config_path, [*spec.overrides, *uniform,
                                                             f"train.validate_every={interval}",
                                                             "logging.tensorboard=false"], out=str(out / "baseline"))
    checkpoint = fit(run, out=run_dir, data_root=data_root)
    validation = {str(entry["step"]): validation_scores(entry) for entry in read_state(checkpoint)["validation"]}
    measured = {"validation": validation, "wall_s": time.time() - started}
    path.write_text(json.dumps(measured, indent=2))
    return measured


class KeepsTheLastStep(LeavesTheLastStepAlone, PopulationBasedTraining):
    """PBT that leaves a member alone at the run's last step."""


def make_scheduler(spec: PbtSpec, run: RunConfig, interval: int):
    settings = spec.settings
    mutations = param_space(spec.space, run)
    if settings.scheduler == "pb2":
        from tune.pb2_scheduler import pb2_scheduler

        return pb2_scheduler(mutations, last_step=run.train.steps, time_attr=STEP, metric=OBJECTIVE, mode="max",
                             perturbation_interval=interval, quantile_fraction=settings.quantile_fraction, synch=True)
    return KeepsTheLastStep(
        last_step=run.train.steps, time_attr=STEP, metric=OBJECTIVE, mode="max", perturbation_interval=interval,
        hyperparam_mutations=mutations, quantile_fraction=settings.quantile_fraction,
        resample_probability=settings.resample_probability, synch=True)


def make_tuner(spec: PbtSpec, out: Path, run: RunConfig, setup: MemberSetup, *, concurrency: int,
               callbacks: list = ()) -> ray.tune.Tuner:
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_member, setup=setup),
                                        {"CPU": spec.settings.trial_cpus})
    experiment = out / EXPERIMENT
    if ray.tune.Tuner.can_restore(str(experiment)):
        return ray.tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False, restart_errored=False)
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(spec.space, run),
        tune_config=ray.tune.TuneConfig(
            num_samples=spec.settings.population, scheduler=make_scheduler(spec, run, setup.interval),
            search_alg=BasicVariantGenerator(random_state=spec.settings.seed, max_concurrent=concurrency),
            # A member stopped for an exploit must take its actor (and the Train run it owns) with it.
            reuse_actors=False),
        run_config=ray.tune.RunConfig(
            name=EXPERIMENT, storage_path=str(out), verbose=1,
            failure_config=ray.tune.FailureConfig(max_failures=spec.settings.max_failures),
            # An exploit copies a member's last checkpoint; two more keep it while the others catch up.
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=3),
            callbacks=list(callbacks)),
    )


def run_pbt(spec: PbtSpec | None, out: str | Path, *, address: str | None = None,
            callbacks: list = ()) -> PbtOutcome:
    """Run (or resume) the population in folder ``out``; ``spec`` None = resume the folder's saved one."""
    out = Path(out).resolve()
    if (out / "pbt.yaml").is_file():
        spec = config_io.load(PbtSpec, out / "pbt.yaml")
    elif spec is None:
        raise FileNotFoundError(f"no population to resume in {out} (pbt.yaml missing)")
    run = check_pbt(spec)
    out.mkdir(parents=True, exist_ok=True)
    config_io.save(spec, out / "pbt.yaml")
    interval = interval_of(spec, run)
    ray_runtime.connect(address or run.scale.address)
    settings = SweepSettings(samples=spec.settings.population, concurrency=spec.settings.concurrency,
                             trial_cpus=spec.settings.trial_cpus)
    concurrency = trial_concurrency(run, settings, free_resources())
    # PBT compares members at the same step: all of them must train at once. Fewer slots would run them one after
    # another, each alone at its quantile and never copied: refused, not silently degenerate.
    require(concurrency >= spec.settings.population, "population",
            f"{spec.settings.population} members must train at once for PBT to compare them, and this cluster "
            f"holds {concurrency} (each reserves trial_cpus + workers × (scale.cpus_per_worker + "
            "data.loader_concurrency × data.loader_cpus)): lower the population or what each member reserves")
    from pipelines.stage1.encoders import pretrained_overrides

    # Stage 1 once (cached): every member's encoders start from it.
    overrides = [*spec.overrides, *pretrained_overrides(spec.config_path, spec.overrides, out / "stage1")]
    spec = PbtSpec(spec.config_path, overrides, spec.space, spec.settings)
    baseline = measure_baseline(spec, out, interval)
    print(f"[pbt] {spec.settings.population} members, {concurrency} at a time, interval {interval} steps of "
          f"{run.train.steps}; the uniform run's validation: {json.dumps(baseline['validation'])}", flush=True)
    setup = MemberSetup(out=str(out), cwd=str(Path.cwd()), config_path=spec.config_path, overrides=overrides,
                        steps=run.train.steps, interval=interval, baseline=baseline["validation"],
                        floor=spec.settings.floor)
    before = orphaned_groups.live_actor_groups()
    sweeper = orphaned_groups.OrphanedGroupSweeper()
    started = time.time()
    # Actors are not reused on purpose (an exploited member's actor takes its Train run with it).
    warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
    grid = make_tuner(spec, out, run, setup, concurrency=concurrency, callbacks=[sweeper, *callbacks]).fit()
    wall = time.time() - started
    orphaned_groups.settle(before)
    rows, files = write_outputs(grid, out, run=run, spec=spec, interval=interval)
    interrupted = len(rows) < spec.settings.population or any(row["step"] < run.train.steps for row in rows)
    summary = {"wall_s": wall, "baseline_s": baseline["wall_s"], "members": len(rows), "concurrency": concurrency,
               "interval": interval, "steps": run.train.steps,
               "best": rows[0] and {k: rows[0][k] for k in ("member", OBJECTIVE)} if rows else None}
    files["summary"] = out / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return PbtOutcome(rows, files, summary, interrupted)
