"""One member of a Population Based Training run: the Tune function trainable of ``tune/pbt.py``.

A member trains its run one perturbation interval at a time (``train.stop_at``), each interval a TorchTrainer
fit in the member's run folder that goes on from the previous one's checkpoint. At the end of each interval its
validation metrics (``train.validate_every`` = the interval) give the objective, relative to the uniform baseline
at the same step, and the member reports it to Tune with a checkpoint: the Train checkpoint and ``member.json``
(the step and the whole schedule so far). Tune's scheduler may then stop it and start it again from a better
member's checkpoint with perturbed values: the member reads that checkpoint, keeps its schedule up to the step and
adds the new values from there (``unip2.schedules.with_piece``), and trains on in a fresh run folder whose run
starts from the copied checkpoint (``train.resume_from``). A member's report blocks until Tune has taken it, so no
Train run is in flight when a member is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray.tune

from pipelines.run.prepare import prepare_run
from pipelines.training.trainer import make_trainer
from tune.objective import FLOOR, OBJECTIVE, metric_key, relative_objective
from tune.search_space import flat_params
from unip2.schedules import with_piece

MEMBER_FILE = "member.json"
"""Written into the Train checkpoint a member reports, which is the member's Tune checkpoint as it is."""
STEP = "step"
"""Result key of the training step a report was made at (PBT's time attribute)."""


@dataclass
class MemberSetup:
    """What every member shares."""

    out: str
    """The PBT folder (members' run folders go to ``<out>/members/<trial id>/``)."""
    cwd: str
    """The driver's working directory (relative paths in the run config mean what they mean there)."""
    config_path: str | None
    overrides: list[str] = field(default_factory=list)
    """The base run's overrides (stage-1 encoders included): every member trains this config."""
    steps: int = 0
    """The base run's ``train.steps``: where every member ends."""
    interval: int = 100
    """Steps between reports (Tune's perturbation interval, the validations)."""
    baseline: dict = field(default_factory=dict)
    """{step: {``<task>/<metric>``: value}}: the uniform run's validation metrics at every interval's end."""
    floor: float = FLOOR


def schedule_overrides(schedule: dict) -> list[str]:
    """{config key: number or pieces} → ``key=value`` overrides (pieces as a JSON mapping)."""
    return [f"{key}={json.dumps(value) if isinstance(value, dict) else repr(float(value))}"
            for key, value in schedule.items()]


def continue_schedule(schedule: dict, step: int, values: dict[str, float]) -> dict:
    """The schedule a member trains from ``step`` on: its past as it was, ``values`` (flat config keys) from
    ``step``."""
    return {key: with_piece(schedule.get(key, value), step, float(value)) for key, value in values.items()}


def validation_scores(metrics: dict) -> dict[str, float]:
    """A Train report's ``val/<task>/<metric>`` → {``<task>/<metric>``: value}."""
    return {key[4:]: float(value) for key, value in metrics.items() if key.startswith("val/")}


def run_member(config: dict, *, setup: MemberSetup) -> None:
    """The trainable (``ray.tune.with_parameters(run_member, setup=...)``); ``config``: the member's current ω_k,
    s_k and lr, nested like the run config."""
    os.chdir(setup.cwd)
    trial = ray.tune.get_context().get_trial_id()
    # Each start of the member (first, after an exploit, after an interruption) trains in a folder of its own:
    # a folder already holding Train checkpoints would resume from them instead of from the copied one.
    out = Path(setup.out) / "members" / trial / uuid.uuid4().hex[:8]
    out.mkdir(parents=True)
    member, resume_from = {"step": 0, "schedule": {}}, None
    restored = ray.tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as directory:
            member = json.loads((Path(directory) / MEMBER_FILE).read_text())
            resume_from = out / "start"
            shutil.copytree(directory, resume_from)
    step, base = member["step"], setup.steps
    if step >= base:  # copied at the last step: the member ends as that copy (its result and checkpoint)
        _report(member, member["scores"], member["objective"], config, resume_from)
        return
    schedule = continue_schedule(member["schedule"], step, flat_params(config))
    while step < base:
        end = min(step + setup.interval, base)
        overrides = [*setup.overrides, *schedule_overrides(schedule), f"train.stop_at={end}",
                     f"train.validate_every={setup.interval}", "logging.tensorboard=false"]
        if resume_from is not None:
            overrides.append(f"train.resume_from={resume_from}")
        run, run_dir, data_root = prepare_run(setup.config_path, overrides, out=str(out / "run"))
        result = make_trainer(run, out=run_dir, data_root=data_root).fit()
        if result.error is not None:
            raise result.error
        step = end
        scores = validation_scores(result.metrics)
        # The sweep's objective: each task's own metric once (not the report's extra columns), against the
        # uniform run's at this step.
        reference = {key: value for key, value in (setup.baseline.get(str(step)) or {}).items()
                     if key in {metric_key(task) for task in run.tasks}}
        objective = relative_objective(scores, reference, floor=setup.floor) if reference else float("nan")
        member = {"step": step, "schedule": schedule, "run_dir": str(run_dir), "scores": scores,
                  "objective": objective}
        with result.checkpoint.as_directory() as directory:
            _report(member, scores, objective, config, Path(directory))


def _report(member: dict, scores: dict, objective: float, config: dict, train_checkpoint: Path) -> None:
    """Report the member's step to Tune with the Train checkpoint as its checkpoint, ``member.json`` written into
    it: Tune copies it once into the experiment's storage (no staging copy of a model-sized folder)."""
    (train_checkpoint / MEMBER_FILE).write_text(json.dumps(member, indent=2))
    ray.tune.report({STEP: member["step"], OBJECTIVE: objective, **scores,
                     **{f"value/{key}": float(value) for key, value in flat_params(config).items()}},
                    checkpoint=ray.tune.Checkpoint.from_directory(str(train_checkpoint)))
