"""Everything a run checks and resolves before Ray Train starts: config, data, class names, the caption
vocabulary, run folder."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq

from pipelines.run import ray_runtime  # (first: sets Ray's environment before ray is imported)
from pipelines.run import cluster_fit
from pipelines.training.trackers import check_trackers
from unip2 import config_io
from unip2.config_io import ConfigError
from unip2.data.embedded import ensure_embedded_data
from unip2.data.manifest import load_manifest, split_files, train_rows
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import RunConfig, load_run_config, weights_to_download
from unip2.tasks import TASKS, dataset_schema


RUN_CONFIG_FILE = "run_config.yaml"
"""The run's resolved config in its run folder: a restart resumes with it."""


def resolve_data(run: RunConfig) -> tuple[Path, dict]:
    """The converted data folder (the embedded default is generated on first use) and its manifest."""
    if run.data.root is None:
        root = ensure_embedded_data(run.data.cache_dir, seed=run.data.synthetic_seed)
    else:
        root = Path(run.data.root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root: no such folder: {root}")
    return root, load_manifest(root)


def _unusable_dataset(root: Path, manifest: dict, dataset: str, task: str) -> str | None:
    """Why ``task`` cannot train on ``dataset`` of the data folder, or None."""
    if "train" not in manifest["datasets"].get(dataset, {}).get("splits", {}):
        return (f"dataset {dataset!r} has no 'train' split in {root}; the data folder has: "
                f"{', '.join(sorted(manifest['datasets'])) or 'nothing'}")
    files = split_files(root, dataset, "train")
    expected = dataset_schema(TASKS[task].dataset)
    if files and [(f.name, f.type) for f in pq.read_schema(files[0])] != [(f.name, f.type) for f in expected]:
        return f"dataset {dataset!r} has other columns than the {task} task reads ({TASKS[task].dataset!r}'s)"
    return None


def check_data(run: RunConfig, manifest: dict, root: Path) -> None:
    """Every task needs training rows from datasets of its schema, and its label space needs names."""
    for task in run.tasks:
        if run.tasks[task].datasets is not None:  # listed by the user: each must exist and fit the task
            for dataset in run.tasks[task].datasets:
                problem = _unusable_dataset(root, manifest, dataset, task)
                if problem is not None:
                    raise ConfigError(f"tasks.{task}.datasets", problem)
        if train_rows(manifest, run.train_datasets(task)) == 0:
            names = " + ".join(repr(name) for name in run.train_datasets(task))
            raise ConfigError(f"tasks.{task}", f"no training data: dataset {names} has no 'train' rows in the "
                                               "data folder")
        space = TASKS[task].label_space
        if space is not None and not run.model.class_names.get(space):
            raise ConfigError(f"model.class_names.{space}", f"no class names for the {task} task")


def fill_task_options(run: RunConfig, root: Path, manifest: dict) -> None:
    """Every task's options that a training run derives from its data, once, before it starts (e.g. captioning's
    candidate tokens from the training captions): a resumed run keeps what it saved."""
    tokenizer = tokenizer_for(run.model.text)
    for name, task in TASKS.items():
        datasets = run.train_datasets(name) if name in run.tasks else [task.dataset]
        options = run.model.task_options(name)
        task.fill_options(options, data_root=root, datasets=datasets, train_rows=train_rows(manifest, datasets),
                          tokenizer=tokenizer)
        run.model.tasks[name] = options


def prepare_run(config_path: str | None, overrides: list[str], *, out: str | None = None,
                address: str | None = None, keep_logs: bool = False) -> tuple[RunConfig, Path, Path]:
    """Load and validate the config, connect to Ray (``scale.num_workers: auto`` resolved there) and make the
    data ready → (run, run folder, data root); the run's config is saved in the run folder. Stage 1 is the
    launcher's next step (``pipelines.stage1.encoders.pretrain_if_needed``).
    ``keep_logs``: Ray's logs go to the run folder's ``logs/``, off the console (see ``ray_runtime.connect``)."""
    run = load_run_config(config_path, overrides)
    out_dir = Path(out or run.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    previous = out_dir / RUN_CONFIG_FILE
    if previous.is_file():  # resuming: the saved config wins, command-line overrides still apply
        run = load_run_config(previous, overrides)
    if run.pretrain.random_init == "refuse" and run.random_encoders():  # before anything starts
        raise weights_to_download(run, run.random_encoders(), "not set, and stage 1 (pretrain.encoders) does not "
                                                             "pretrain it")
    check_trackers(run)  # a tracker whose package is missing: refused now, not in the Train controller
    root, manifest = resolve_data(run)
    if not run.model.class_names:
        run.model.class_names = {k: list(v) for k, v in manifest["class_names"].items()}
    config_io.validate(run)
    check_data(run, manifest, root)
    fill_task_options(run, root, manifest)
    run.out = str(out_dir)
    run.data.root = str(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    ray_runtime.connect(address or run.scale.address, log_dir=out_dir / "logs" if keep_logs else None)
    # scale.num_workers: auto → a number, saved below with the run config
    cluster_fit.resolve_worker_count(run, ray_runtime.cluster_resources())
    config_io.save(run, previous)
    return run, out_dir, root
