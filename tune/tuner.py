"""Running a sweep: baseline, resources, the Tuner (random search + ASHA), resume, output files.

Phases of ``run_sweep``:
1. The sweep folder's ``sweep.yaml`` (settings, base config, search space) is written, or read back when
   the folder already holds a sweep: a re-run resumes it with its saved settings.
2. The baseline (ω = s = 1 for every task, the configured learning rate, the same budget) is trained and
   evaluated once in the driver and cached in ``baseline.json``.
3. Resources: a trial reserves ``trial_cpus`` for its driver function plus what its run config asks of
   Train (workers × (``scale.cpus_per_worker`` + ``data.loader_concurrency`` × ``data.loader_cpus``));
   one whole CPU is always left free because Ray Data's ``from_numpy`` and read tasks ask for a whole
   CPU and would otherwise wait forever behind the trials' reservations (the silent hang of concurrent
   Tune+Train trials on 2 cores). Concurrency = how many trials fit in the free resources besides that
   CPU; the search algorithm enforces it.
4. ``Tuner.fit`` (or ``Tuner.restore(...).fit`` when ``Tuner.can_restore``), with ``FailureConfig`` so a
   failing trial is retried and then recorded, never ending the sweep; placement groups left by trials
   stopped early are freed (``tune.orphaned_groups``).
5. ``results.csv`` / ``results.md``, ``sweep.png``, ``best.yaml``, ``summary.json`` (wall time, sum of
   trial times, Tune overhead).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.trainable.function_trainable import wrap_function

from pipelines.run import ray_runtime
from tune import orphaned_groups, results, trial_stop
from tune.objective import FLOOR, OBJECTIVE, PROGRESS, check_metric
from tune.progress_report import TRAIN_REPORT
from tune.search_space import SearchSpace, param_space, uniform_params
from tune.trial import EvaluationSettings, TrialSetup, run_trial, train_and_evaluate
from unip2 import config_io
from unip2.config_io import ConfigError, require
from unip2.run_config import RunConfig, load_run_config

DATA_TASK_CPUS = 1.0
"""CPUs Ray Data's ``from_numpy`` and read tasks ask for (Ray 2.60): kept free at all times."""
EXPERIMENT = "tune"
"""Name of the Tune experiment folder inside the sweep folder."""


@dataclass
class SweepSettings:
    """How a sweep runs (saved in ``sweep.yaml``, reused on resume)."""

    samples: int = 8
    """Trials drawn from the search space."""
    metric: str = OBJECTIVE
    """What ``best.yaml`` and the ranking maximize: ``objective`` or a ``<task>/<metric>`` of the run's tasks."""
    concurrency: int | None = None
    """Trials at once; None = as many as the cluster's CPUs (and GPUs) hold, one CPU kept free."""
    trial_cpus: float = 0.1
    """CPUs reserved by each trial's driver function (it mostly waits on Train)."""
    max_failures: int = 1
    """Retries of a failing trial before it is recorded as an error (the sweep goes on)."""
    grace_period: int = 1
    """ASHA: reports a trial makes before it can be stopped."""
    reduction_factor: int = 2
    """ASHA: keep the top 1/reduction_factor at every rung."""
    floor: float = FLOOR
    """δ of the relative objective (``tune.objective``)."""
    seed: int = 0
    """Seed of the random search."""
    time_budget_s: float | None = None
    """Stop starting and running trials after this long (None = no limit)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)

    def validate(self, prefix: str = "") -> None:
        require(self.samples > 0, prefix + "samples", "must be > 0")
        require(self.concurrency is None or self.concurrency > 0, prefix + "concurrency", "must be > 0")
        require(self.trial_cpus > 0, prefix + "trial_cpus", "must be > 0")
        require(self.max_failures >= 0, prefix + "max_failures", "must be >= 0")
        require(self.grace_period > 0, prefix + "grace_period", "must be > 0")
        require(self.reduction_factor > 1, prefix + "reduction_factor", "must be > 1")
        require(self.floor > 0, prefix + "floor", "must be > 0")


@dataclass
class SweepSpec:
    """Everything that defines a sweep: ``<out>/sweep.yaml``."""

    config_path: str | None = None
    """Base run config YAML (None = the defaults)."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides of the base run config."""
    space: SearchSpace = field(default_factory=SearchSpace)
    settings: SweepSettings = field(default_factory=SweepSettings)


@dataclass
class SweepOutcome:
    rows: list[dict]
    """Baseline first, then the trials ranked by the sweep metric."""
    best: dict | None
    files: dict[str, Path]
    summary: dict
    interrupted: bool


def base_run(spec: SweepSpec) -> RunConfig:
    return load_run_config(spec.config_path, spec.overrides)


def check_spec(spec: SweepSpec) -> RunConfig:
    """Refuse a bad sweep before any Ray work: config, search space, metric; returns the base run config."""
    config_io.validate(spec.settings)
    config_io.validate(spec.space)
    run = base_run(spec)
    require(run.scale.num_workers != "auto", "scale.num_workers",
            "a sweep's trials need a number (auto would give every trial the whole cluster)")
    param_space(spec.space, run)
    check_metric(spec.settings.metric, list(run.tasks))
    return run


def save_spec(spec: SweepSpec, out: Path) -> None:
    config_io.save(spec, out / "sweep.yaml")


def load_spec(out: Path) -> SweepSpec:
    return config_io.load(SweepSpec, out / "sweep.yaml")


def report_count(run: RunConfig) -> int:
    """Results a trial reports: one per Train checkpoint, then the evaluation."""
    return math.ceil(run.train.steps / run.train.checkpoint_every) + 1


def trial_footprint(run: RunConfig, settings: SweepSettings, *, use_gpu: bool) -> dict[str, float]:
    """Resources one trial holds while training (its evaluation holds less)."""
    workers = run.scale.num_workers
    cpus = settings.trial_cpus + workers * (run.scale.cpus_per_worker + run.data.loader_concurrency * run.data.loader_cpus)
    evaluation = settings.trial_cpus + (0 if use_gpu else settings.evaluation.num_cpus)
    return {"CPU": max(cpus, evaluation), "GPU": float(workers if use_gpu else 0)}


def free_resources(timeout_s: float = 15.0) -> dict[str, float]:
    """The cluster's free resources once they stop changing (a finished run's actors exit asynchronously):
    what a sweep can count on, whatever else shares the cluster."""
    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        now = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last or {}


def trial_concurrency(run: RunConfig, settings: SweepSettings, cluster: dict[str, float]) -> int:
    """Trials that fit at once in ``cluster`` (free resources) with one CPU kept free for Ray Data's tasks;
    refuses a trial that never fits, or a ``settings.concurrency`` above what fits."""
    use_gpu = cluster.get("GPU", 0) > 0 if run.scale.use_gpu is None else run.scale.use_gpu
    footprint = trial_footprint(run, settings, use_gpu=use_gpu)
    room = cluster.get("CPU", 0) - DATA_TASK_CPUS
    if footprint["CPU"] > room + 1e-9:
        raise ConfigError("scale.cpus_per_worker", (
            f"a trial reserves {footprint['CPU']:g} CPUs (trial_cpus + workers × (cpus_per_worker + "
            f"loader_concurrency × loader_cpus)) and {DATA_TASK_CPUS:g} must stay free for Ray Data, but the "
            f"cluster has {cluster.get('CPU', 0):g}: lower scale.cpus_per_worker / data.loader_cpus / workers"))
    fits = int((room + 1e-9) // footprint["CPU"])
    if footprint["GPU"]:
        fits = min(fits, int(cluster.get("GPU", 0) // footprint["GPU"]))
    if fits < 1:
        raise ConfigError("scale.num_workers", f"a trial needs {footprint['GPU']:g} GPUs; the cluster has "
                                               f"{cluster.get('GPU', 0):g}")
    if settings.concurrency is not None:
        require(settings.concurrency <= fits, "concurrency",
                f"{settings.concurrency} trials would not fit: at most {fits} at once on this cluster")
        return settings.concurrency
    return max(1, min(fits, settings.samples))


def measure_baseline(spec: SweepSpec, out: Path) -> dict:
    """The uniform-weight run, trained and evaluated once per sweep; ``baseline.json`` is reused."""
    path = out / "baseline.json"
    if path.is_file():
        return json.loads(path.read_text())
    started = time.time()
    setup = TrialSetup(sweep_dir=str(out), config_path=spec.config_path, overrides=spec.overrides,
                       evaluation=spec.settings.evaluation, floor=spec.settings.floor)
    measured = train_and_evaluate(setup, uniform_params(base_run(spec)), out / "baseline")
    measured["wall_s"] = time.time() - started
    path.write_text(json.dumps(measured, indent=2))
    return measured


def make_trainable(spec: SweepSpec, out: Path, baseline: dict):
    setup = TrialSetup(sweep_dir=str(out), cwd=str(Path.cwd()), config_path=spec.config_path,
                       overrides=spec.overrides, evaluation=spec.settings.evaluation, baseline=baseline,
                       floor=spec.settings.floor)
    trainable = trial_stop.reusable(wrap_function(ray.tune.with_parameters(run_trial, setup=setup)))
    return ray.tune.with_resources(trainable, {"CPU": spec.settings.trial_cpus})


def make_scheduler(run: RunConfig, settings: SweepSettings) -> ASHAScheduler:
    """ASHA on ``progress``, with rungs on the Train report's number (``train_report``), not on Tune's iteration
    count: a trial resumed after an interruption counts iterations from 1 again while Train goes on from its
    checkpoint, so iteration rungs compared its step-8 loss ratio (or its final, post-evaluation result) with
    other trials' step-4 ones. In a trial never interrupted the two counts are the same; the final result
    carries no report number and ASHA leaves it alone (as it did at iteration ``max_t``)."""
    reports = report_count(run)
    return ASHAScheduler(time_attr=TRAIN_REPORT, metric=PROGRESS, mode="max", max_t=reports,
                         grace_period=min(settings.grace_period, reports), reduction_factor=settings.reduction_factor)


def make_tuner(spec: SweepSpec, out: Path, trainable, *, concurrency: int, callbacks: list = ()) -> ray.tune.Tuner:
    """A new Tuner running ``trainable`` over the sweep's search space, at most ``concurrency`` trials at
    once, or the interrupted one restored from ``<out>/tune``."""
    experiment = out / EXPERIMENT
    if ray.tune.Tuner.can_restore(str(experiment)):
        return ray.tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False, restart_errored=False)
    run = base_run(spec)
    settings = spec.settings
    scheduler = make_scheduler(run, settings)
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(spec.space, run),
        # The limit goes to the generator: Tune ignores TuneConfig.max_concurrent_trials when given a
        # BasicVariantGenerator, and every trial would start at once (and starve Ray Data for good).
        tune_config=ray.tune.TuneConfig(
            num_samples=settings.samples, scheduler=scheduler, time_budget_s=settings.time_budget_s,
            search_alg=BasicVariantGenerator(random_state=settings.seed, max_concurrent=concurrency),
            # A trial actor's start and imports (~5 s on 2 cores) are paid once per concurrent slot, not per trial.
            reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name=EXPERIMENT, storage_path=str(out), verbose=1,
            failure_config=ray.tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=list(callbacks)),
    )


def run_sweep(spec: SweepSpec | None, out: str | Path, *, address: str | None = None,
              callbacks: list = ()) -> SweepOutcome:
    """Run (or resume) the sweep in folder ``out``; ``spec`` None = resume the folder's saved sweep.

    ``callbacks``: extra Tune callbacks of this run (not saved with the sweep).
    """
    out = Path(out).resolve()
    resuming = (out / "sweep.yaml").is_file()
    if spec is None or resuming:
        if not resuming:
            raise FileNotFoundError(f"no sweep to resume in {out} (sweep.yaml missing)")
        spec = load_spec(out)
    run = check_spec(spec)
    out.mkdir(parents=True, exist_ok=True)
    save_spec(spec, out)
    tasks = list(run.tasks)
    ray_runtime.connect(address or run.scale.address)
    from pipelines.stage1.encoders import pretrained_overrides

    # Stage 1 once for the whole sweep (cached): every trial's encoders start from it.
    spec.overrides = [*spec.overrides, *pretrained_overrides(spec.config_path, spec.overrides, out / "stage1")]
    baseline = measure_baseline(spec, out)
    concurrency = trial_concurrency(run, spec.settings, free_resources())
    print(f"[sweep] {spec.settings.samples} trials, {concurrency} at a time; baseline {json.dumps(baseline['scores'])}",
          flush=True)

    before = orphaned_groups.live_actor_groups()
    sweeper = orphaned_groups.OrphanedGroupSweeper()
    started = time.time()
    tuner = make_tuner(spec, out, make_trainable(spec, out, baseline), concurrency=concurrency,
                       callbacks=[sweeper, *callbacks])
    grid = tuner.fit()
    wall = time.time() - started
    freed = orphaned_groups.settle(before) + sweeper.removed

    # Statuses as saved: Tune marks trials it stops on an interruption TERMINATED in the returned grid.
    states = {t.trial_id: t.status for t in ray.tune.ExperimentAnalysis(str(out / EXPERIMENT)).trials}
    rows = results.ranked(results.trial_rows(grid, tasks, states), spec.settings.metric)
    interrupted = len(rows) < spec.settings.samples or any(r["status"] == results.UNFINISHED for r in rows)
    all_rows = [results.baseline_row(baseline), *rows]
    files = results.write_outputs(all_rows, tasks, out, metric=spec.settings.metric, config_path=spec.config_path,
                                  overrides=spec.overrides)
    best = results.best_row(rows, spec.settings.metric)
    trial_seconds = sum(r["trial_wall_s"] or 0.0 for r in rows)
    summary = {"sweep_wall_s": wall, "sum_trial_s": trial_seconds, "baseline_s": baseline["wall_s"],
               "concurrency": concurrency, "tune_overhead_ratio": wall / trial_seconds if trial_seconds else None,
               "trials": len(rows), "completed": sum(r["status"] == results.COMPLETED for r in rows),
               "stopped_early": sum(r["status"] == results.STOPPED for r in rows),
               "errors": sum(r["status"].startswith(results.ERROR) for r in rows),
               "freed_placement_groups": len(set(freed)), "metric": spec.settings.metric,
               "best": best and {"trial": best["trial"], spec.settings.metric: best[spec.settings.metric],
                                 "params": best["params"]}}
    files["summary"] = out / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return SweepOutcome(all_rows, best, files, summary, interrupted)
