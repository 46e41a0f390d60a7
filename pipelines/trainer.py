"""Launching ``train_loop_per_worker`` with Ray Train's TorchTrainer, sized for the cluster at hand."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from pipelines import ray_runtime
from pipelines.stream_spec import StreamSpec
from pipelines.train_loop import LoopHooks, LoopInputs, train_loop_per_worker
from unip2.run_config import RunConfig


def worker_count(run: RunConfig) -> int | tuple[int, int]:
    """Ray Train's ``num_workers``: fixed, or (min, max) for an elastic run."""
    if run.scale.min_workers is None or run.scale.min_workers == run.scale.num_workers:
        return run.scale.num_workers
    return (run.scale.min_workers, run.scale.num_workers)


def make_trainer(run: RunConfig, *, out: Path, data_root: Path, callbacks: list = (),
                 hooks: LoopHooks | None = None) -> TorchTrainer:
    """``callbacks``: Ray Train callbacks of this run (Tune trials pass their progress reporter); ``hooks``:
    callbacks into every worker's loop (tests inject faults and trace steps with them)."""
    use_gpu = ray_runtime.cluster_has_gpus() if run.scale.use_gpu is None else run.scale.use_gpu
    resources = {"CPU": run.scale.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    storage_path = run.scale.storage_path
    if storage_path is None:
        storage_path = str((out / "ray").resolve())
    elif "://" not in storage_path:  # a path every node sees; a URI (s3://, gs://) goes to Ray as is
        storage_path = str(Path(storage_path).expanduser().resolve())
    inputs = LoopInputs(stream=StreamSpec.of(run, data_root), hooks=hooks or LoopHooks())
    return TorchTrainer(
        functools.partial(train_loop_per_worker, inputs),
        scaling_config=ray.train.ScalingConfig(num_workers=worker_count(run), use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=out.name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=run.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks)),
    )


def fit(run: RunConfig, *, out: Path, data_root: Path, callbacks: list = (), hooks: LoopHooks | None = None) -> Path:
    """Train; returns the final checkpoint as a local directory."""
    result = make_trainer(run, out=out, data_root=data_root, callbacks=callbacks, hooks=hooks).fit()
    if result.error is not None:
        raise result.error
    local = out / "last_checkpoint"
    with result.checkpoint.as_directory() as directory:
        if local.exists():
            shutil.rmtree(local)
        shutil.copytree(directory, local)
    return local
