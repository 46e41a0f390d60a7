"""One sweep trial: train the run config with the trial's ω_k, s_k and learning rate, evaluate, report.

Train V2 style: the Tune trainable is a driver function that launches the project's TorchTrainer
(``pipelines.training.trainer.make_trainer``) and, when it is done, evaluates the final checkpoint with
``pipelines.evaluation.pipeline.evaluate``. Every Train report (at each checkpoint: step, ``loss/<task>``) reaches
Tune through ``tune.progress_report.ProgressReport`` with the loss ratio to the baseline added, for ASHA; the
last report holds every task's headline metric and the objective.

Each trial's run folder is ``<sweep>/trials/<trial id>/`` (run config, Train storage, evaluation); a trial
restarted after an interruption resumes its training from the last checkpoint there. Trial actors are reused
(``tune.trial_stop``): a trial stopped by ASHA ends its Train run when its actor is handed to the next trial, and
returns without evaluating.
"""

from __future__ import annotations

import time

_IMPORT_STARTED = time.time()  # a trial actor imports this module first: the start of its imports

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import ray.tune  # noqa: E402

from pipelines.run.ray_runtime import cluster_has_gpus  # noqa: E402
from pipelines.stage1.encoders import pretrain_if_needed  # noqa: E402
from pipelines.run.prepare import prepare_run  # noqa: E402
from pipelines.training.trainer import make_trainer  # noqa: E402
from tune.objective import FLOOR, OBJECTIVE, PROGRESS, relative_objective, task_scores  # noqa: E402
from tune.progress_report import ProgressReport, step_progress  # noqa: E402
from tune.search_space import to_overrides  # noqa: E402
from tune import trial_stop  # noqa: E402
from tune.trial_timeline import TrialClock, process_started  # noqa: E402
from unip2.run_config import load_run_config  # noqa: E402

_IMPORTED = time.time()

# The evaluation's code (the model, timm, transformers: ~3 s in a fresh process) is needed only once training is
# done: a trial imports it in the background while Ray Train starts its workers, not before it can launch them.
_EVALUATION_CODE = "pipelines.evaluation.pipeline"


def _import_evaluation_in_background() -> threading.Thread:
    thread = threading.Thread(target=importlib.import_module, args=(_EVALUATION_CODE,), daemon=True,
                              name="import-evaluation")
    thread.start()
    return thread


@dataclass
class EvaluationSettings:
    """How a trial's checkpoint is evaluated (small and fast for sweeps). On a cluster without GPUs the
    trial predicts in its own process (``evaluate(in_process=True)``: same predictions, no Ray Data
    pipeline and predictor actor to start, ~15 s less per trial on 2 CPUs); with GPUs, a Ray Data
    predictor actor takes one."""

    split: str = "val"
    max_images: int | None = None
    """First N rows of each dataset's split; None = all."""
    meteor: bool = False
    """METEOR needs a Java process (~10 s): off in sweeps, CIDEr is the captioning metric."""
    num_cpus: float = 0.25
    """CPUs of the evaluation's predictor actor (in the trial's process: its torch threads, at least 1)."""
    batch_size: int = 16


@dataclass
class TrialSetup:
    """Everything a trial needs besides its parameters (shared by all trials of a sweep)."""

    sweep_dir: str
    cwd: str = "."
    """The driver's working directory: trials run there (Tune would move them), so relative paths in the
    run config (``data.cache_dir``, tokenizer files) mean what they mean to the driver."""
    config_path: str | None = None
    """Base run config YAML; None = the defaults."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides of the base run config (the trial's parameters come after them)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    baseline: dict | None = None
    """``baseline.json``: {"scores": {metric: value}, "losses": {step: {"loss/<task>": value}}, ...}."""
    floor: float = FLOOR
    """δ of the relative objective (``tune.objective``)."""


def train_and_evaluate(setup: TrialSetup, params: dict, out: Path, *, callbacks: list = (),
                       clock: TrialClock | None = None, stopped: Callable[[], bool] = lambda: False) -> dict | None:
    """Train the base config with ``params`` applied into run folder ``out``, then evaluate.

    Returns {"scores": {``<task>/<metric>``: value}, "losses": {step: {"loss/<task>": value}},
    "train_s", "eval_s"}; also written to ``out/trial.json``. ``clock``: marks the phases
    (``tune.trial_timeline``). ``stopped()`` true after training (the trial was stopped and its Train run
    ended): None, without evaluating.
    """
    clock = clock or TrialClock()
    run, out, data_root = prepare_run(setup.config_path, [*setup.overrides, *to_overrides(params)], out=str(out))
    run = pretrain_if_needed(run, data_root, out)  # nothing when the sweep's driver pretrained already
    clock.keep_in(out)
    clock.mark("prepared")
    started = time.time()
    trainer = make_trainer(run, out=out, data_root=data_root, callbacks=callbacks)
    clock.mark("trainer_built")
    evaluation_code = _import_evaluation_in_background()  # after the launch's own imports: none run alongside it
    try:
        result = trainer.fit()
    except Exception:
        if stopped():
            return None
        raise
    clock.mark("fit_returned")
    if result.error is not None:
        raise result.error
    if stopped():
        return None
    trained = time.time()
    evaluation_code.join()
    from pipelines.evaluation.pipeline import evaluate
    from pipelines.training.checkpoints import read_state

    evaluation_settings = setup.evaluation
    with result.checkpoint.as_directory() as directory:
        history = read_state(directory)["history"]
        clock.mark("checkpoint_opened")
        evaluation = evaluate(Path(directory) / "model", data_root, split=evaluation_settings.split,
                              tasks=list(run.tasks), out_dir=out / "evaluation",
                              max_images=evaluation_settings.max_images, meteor=evaluation_settings.meteor,
                              num_cpus=evaluation_settings.num_cpus, batch_size=evaluation_settings.batch_size,
                              in_process=not cluster_has_gpus(), precision=run.train.precision)
    measured = {"params": params, "scores": task_scores(evaluation, list(run.tasks)),
                "losses": {entry["step"]: {k: v for k, v in entry.items() if k.startswith("loss/")}
                           for entry in history},
                "train_s": trained - started, "eval_s": time.time() - trained}
    clock.mark("evaluated")
    (out / "trial.json").write_text(json.dumps(measured, indent=2))
    return measured


def run_trial(params: dict, *, setup: TrialSetup) -> None:
    """The Tune trainable (wrap with ``ray.tune.with_parameters(run_trial, setup=...)``)."""
    started = time.time()
    if trial_stop.ran_a_trial():  # an actor reused from an earlier trial
        clock = TrialClock(reused_function_start=started, function_start=started)
    else:  # a fresh actor: its start and imports come before this trial
        clock = TrialClock(process_started=process_started(), module_import_start=_IMPORT_STARTED,
                           module_imported=_IMPORTED, function_start=started)
    os.chdir(setup.cwd)
    out = Path(setup.sweep_dir) / "trials" / ray.tune.get_context().get_trial_id()
    running = trial_stop.begin(out)
    try:
        _train_evaluate_report(params, setup, out, running, clock, started)
    finally:
        trial_stop.end(running)


def _train_evaluate_report(params: dict, setup: TrialSetup, out: Path, running: trial_stop.RunningTrial,
                           clock: TrialClock, started: float) -> None:
    losses = {int(step): value for step, value in setup.baseline["losses"].items()}
    run = load_run_config(setup.config_path, [*setup.overrides, *to_overrides(params)])
    progress = ProgressReport(losses, checkpoint_every=run.train.checkpoint_every, stop_file=str(running.stop_file))
    measured = train_and_evaluate(setup, params, out, callbacks=[progress], clock=clock,
                                  stopped=running.stop_requested)
    if measured is None or running.stop_requested():  # stopped by Tune: no one waits for more results
        clock.mark("stopped")
        return
    scores = measured["scores"]
    last = max(measured["losses"])
    clock.mark("reported")
    ray.tune.report({**scores, OBJECTIVE: relative_objective(scores, setup.baseline["scores"], floor=setup.floor),
                     PROGRESS: step_progress({"step": last, **measured["losses"][last]}, losses),
                     "train_s": measured["train_s"], "eval_s": measured["eval_s"],
                     "trial_wall_s": time.time() - started, "run_dir": str(out)})
