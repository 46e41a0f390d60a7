"""Launching the per-worker training loop with Ray Train's TorchTrainer, sized for the cluster at hand."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from pipelines.run import cluster_fit, ray_runtime
from pipelines.training.live_metrics import TENSORBOARD, TensorBoardLog
from pipelines.data.stream_spec import StreamSpec
from pipelines.training.loop_inputs import LoopHooks, LoopInputs
from pipelines.training.trackers import tracker_callbacks
from unip2.run_config import RunConfig


def run_train_loop(inputs: LoopInputs) -> None:
    """The function each Ray Train worker runs: ``pipelines.training.loop.train_loop_per_worker``, imported in the
    worker only (the launching process does not load the model)."""
    from pipelines.training.loop import train_loop_per_worker

    train_loop_per_worker(inputs)


def worker_count(run: RunConfig) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: fixed, or (min, max) for an elastic run."""
    if run.scale.min_workers is None or run.scale.min_workers == run.scale.num_workers:
        return run.scale.num_workers
    return (run.scale.min_workers, run.scale.num_workers)


def torch_trainer(run: RunConfig, loop, *, name: str, storage_path: str | None, out: Path,
                  callbacks: list = ()) -> TorchTrainer:
    """A TorchTrainer running ``loop`` (a picklable per-worker function) with ``run.scale``'s workers; its run
    storage is ``storage_path`` (a shared path or a URI), else ``<out>/ray``. Raises
    ``cluster_fit.ClusterTooSmall`` (after ``scale.resources_wait_s``) when the cluster cannot hold the workers:
    Ray Train would wait for them forever."""
    use_gpu = ray_runtime.cluster_has_gpus() if run.scale.use_gpu is None else run.scale.use_gpu
    cluster_fit.ensure_cluster_fits(run, use_gpu=use_gpu)
    resources = cluster_fit.worker_resources(run, use_gpu=use_gpu)
    if run.logging.tensorboard:  # every progress window's report, live
        callbacks = [*callbacks, TensorBoardLog(out.resolve() / TENSORBOARD)]
    callbacks = [*callbacks, *tracker_callbacks(run, out)]  # MLflow, W&B: as logging asks
    if storage_path is None:
        storage_path = str((out / "ray").resolve())
    elif "://" not in storage_path:  # a path every node sees; a URI (s3://, gs://) goes to Ray as is
        storage_path = str(Path(storage_path).expanduser().resolve())
    return TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=worker_count(run), use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=run.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks)),
    )


def make_trainer(run: RunConfig, *, out: Path, data_root: Path, callbacks: list = (),
                 hooks: LoopHooks | None = None) -> TorchTrainer:
    """``callbacks``: Ray Train callbacks of this run (Tune trials pass their progress reporter); ``hooks``:
    callbacks into every worker's loop (tests inject faults and trace steps with them)."""
    inputs = LoopInputs(stream=StreamSpec.of(run, data_root), hooks=hooks or LoopHooks())
    return torch_trainer(run, functools.partial(run_train_loop, inputs), name=out.name,
                         storage_path=run.scale.storage_path, out=out, callbacks=callbacks)


def checkpoint_to_local(result, local: Path) -> Path:
    """The result's checkpoint copied into ``local`` (replaced if present); a failed fit raises its error."""
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as directory:
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(directory, local)
    return local


def fit(run: RunConfig, *, out: Path, data_root: Path, callbacks: list = (), hooks: LoopHooks | None = None) -> Path:
    """Train; returns the final checkpoint as a local directory."""
    result = make_trainer(run, out=out, data_root=data_root, callbacks=callbacks, hooks=hooks).fit()
    return checkpoint_to_local(result, out / "last_checkpoint")
