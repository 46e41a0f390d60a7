"""MLflow and Weights & Biases runs fed with the live metrics (``logging.mlflow``, ``logging.wandb``): Ray Train
callbacks like the TensorBoard one (``pipelines.training.live_metrics``), each report of rank 0 logged at its
``step``; the run is finished at the run's last step (or its ``train.stop_at``), and the evaluation's metrics are
added to it at the end (``log_evaluation``). One tracker run per training run, named after its folder, so Tune
trials (one training run each) log the same way. The packages are optional (``pip install -e '.[tracking]'``);
a run asking for one that is not installed is refused before it starts."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import time
from pathlib import Path

import ray.train

from unip2 import config_io
from unip2.config_io import ConfigError
from unip2.run_config import RunConfig

MLFLOW_RUN_ID = "mlflow_run_id"
"""The file in the run folder that names the run's MLflow run (so the evaluation is added to it)."""


def check_trackers(run: RunConfig) -> None:
    """Refuse a run whose ``logging`` names a tracker whose package is missing."""
    for field, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
        if getattr(run.logging, field) is not None:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"logging.{field}", f"needs the {module} package: pip install -e '.[tracking]' "
                                                      f"(or set logging.{field}: null)")


def tracker_callbacks(run: RunConfig, out: Path) -> list:
    """The Train callbacks of the trackers ``run.logging`` turns on."""
    last = run.train.stop_at or run.train.steps
    callbacks = []
    if run.logging.mlflow is not None:
        callbacks.append(MlflowLog(run, out, last))
    if run.logging.wandb is not None:
        callbacks.append(WandbLog(run, out, last))
    return callbacks


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of ``values`` (``step`` left out), keys as the trackers accept them."""
    return {_key(prefix + key): float(value) for key, value in values.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def _key(key: str) -> str:
    return re.sub(r"[^\w\-. /:]", "_", key)  # MLflow's allowed characters (R@1 → R_1)


def _mlflow_uri(run: RunConfig, out: Path) -> str:
    uri = run.logging.mlflow.tracking_uri
    return Path(uri or out / "mlruns").resolve().as_uri() if uri is None or "://" not in uri else uri


def _mlflow_client(uri: str):
    """An MLflow client of ``uri``, in whichever process asks (the Train controller, the driver)."""
    if uri.startswith("file:"):  # MLflow keeps its local file store in maintenance mode behind this opt-in
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def wandb_run_id(out: Path) -> str:
    """The W&B run id of a run folder: the same whenever the folder is trained or resumed."""
    return hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:12]


class _Tracker(ray.train.UserCallback):
    """A tracker that fails (a server gone, a full disk) says so once and is off for the rest of the run: it never
    stops the training."""

    name = "tracker"

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and not getattr(self, "_broken", False):
            try:
                self.log(metrics[0])
            except Exception as err:  # noqa: BLE001  (whatever the tracker raises, training goes on)
                self._broken = True
                print(f"[train] {self.name} logging stopped: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def log(self, metrics: dict) -> None:
        raise NotImplementedError


class MlflowLog(_Tracker):
    """Every Train report (rank 0's) as MLflow metrics at its ``step``; the run config as ``run_config.json``."""

    def __init__(self, run: RunConfig, out: Path, last_step: int):
        self.uri, self.experiment = _mlflow_uri(run, out), run.logging.mlflow.experiment
        self.out, self.last_step, self.config = str(Path(out).resolve()), last_step, config_io.to_dict(run)
        self._client, self._run_id = None, None  # made in the controller, where this object runs

    name = "MLflow"

    def log(self, metrics: dict) -> None:
        import mlflow.entities

        client, run_id = self._open()
        stamp, step = int(time.time() * 1000), int(metrics.get("step", 0))
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, stamp, step)
                                          for k, v in numbers(metrics).items()])
        if step >= self.last_step:
            client.set_terminated(run_id)

    def _open(self):
        if self._client is None:
            self._client = _mlflow_client(self.uri)
            self._run_id = _existing_run(self.out) or _new_mlflow_run(self._client, self.experiment, self.out,
                                                                       self.config)
        return self._client, self._run_id


def _existing_run(out: str) -> str | None:
    path = Path(out) / MLFLOW_RUN_ID
    return path.read_text().strip() if path.is_file() else None


def _new_mlflow_run(client, experiment: str, out: str, config: dict) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name=Path(out).name).info.run_id
    client.log_dict(run_id, config, "run_config.json")
    (Path(out) / MLFLOW_RUN_ID).write_text(run_id)  # a resumed run, and the evaluation, log into the same run
    return run_id


class WandbLog(_Tracker):
    """Every Train report (rank 0's) as W&B history at its ``step``; the run config as the run's config."""

    def __init__(self, run: RunConfig, out: Path, last_step: int):
        self.settings = config_io.to_dict(run.logging.wandb)
        self.out, self.last_step, self.config = str(Path(out).resolve()), last_step, config_io.to_dict(run)
        self._run = None  # made in the controller, where this object runs

    name = "W&B"

    def log(self, metrics: dict) -> None:
        step = int(metrics.get("step", 0))
        run = self._open()
        run.log(numbers(metrics), step=step)
        if step >= self.last_step:
            run.finish()
            self._run = None

    def _open(self):
        if self._run is None:
            self._run = open_wandb(self.settings, self.out, config=self.config)
        return self._run


def open_wandb(settings: dict, out: str | Path, *, config: dict | None = None):
    """The run folder's W&B run (created, or resumed when the folder was trained before)."""
    os.environ.setdefault("WANDB_SILENT", "true")  # one console line per event: ours
    import wandb

    return wandb.init(project=settings["project"], entity=settings.get("entity"), mode=settings["mode"],
                      dir=str(out), id=wandb_run_id(Path(out)), name=Path(out).name, resume="allow",
                      config=config, settings=wandb.Settings(console="off", silent=True))


def log_evaluation(run: RunConfig, out: Path, metrics: dict, step: int) -> None:
    """The evaluation's numbers (``eval/<task>/<metric>``) into the run's trackers, at its last step."""
    values = {}
    for task, entry in metrics.items():
        if isinstance(entry, dict):
            values |= numbers(entry, prefix=f"eval/{task}/")
    if run.logging.mlflow is not None and _existing_run(str(out.resolve())):
        import mlflow.entities

        stamp = int(time.time() * 1000)
        _mlflow_client(_mlflow_uri(run, out)).log_batch(
            _existing_run(str(out.resolve())), metrics=[mlflow.entities.Metric(k, v, stamp, step)
                                                       for k, v in values.items()])
    if run.logging.wandb is not None:
        wandb_run = open_wandb(config_io.to_dict(run.logging.wandb), out.resolve())
        wandb_run.summary.update(values)
        wandb_run.finish()
