"""Everything a run checks and resolves before Ray Train starts: config, data, class names, the caption
vocabulary, run folder."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines import ray_runtime
from unip2 import config_io
from unip2.config_io import ConfigError
from unip2.data.caption_vocabulary import training_caption_token_ids
from unip2.data.embedded import ensure_embedded_data
from unip2.data.manifest import load_manifest
from unip2.model.tokenizer import tokenizer_for
from unip2.run_config import RunConfig, load_run_config
from unip2.tasks import TASKS


def resolve_data(run: RunConfig) -> tuple[Path, dict]:
    """The converted data folder (the embedded default is generated on first use) and its manifest."""
    if run.data.root is None:
        root = ensure_embedded_data(run.data.cache_dir, seed=run.data.synthetic_seed)
    else:
        root = Path(run.data.root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root: no such folder: {root}")
    return root, load_manifest(root)


def train_rows(manifest: dict, task: str) -> int:
    dataset = manifest["datasets"].get(TASKS[task].dataset, {})
    return int(dataset.get("splits", {}).get("train", {}).get("rows", 0))


def check_data(run: RunConfig, manifest: dict) -> None:
    """Every task needs training rows, and its label space needs names."""
    for task in run.tasks:
        if train_rows(manifest, task) == 0:
            raise ConfigError(f"tasks.{task}", f"no training data: dataset {TASKS[task].dataset!r} has no "
                                               "'train' rows in the data folder")
        space = TASKS[task].label_space
        if space is not None and not run.model.class_names.get(space):
            raise ConfigError(f"model.class_names.{space}", f"no class names for the {task} task")


def resolve_caption_vocabulary(run: RunConfig, root: Path, manifest: dict) -> None:
    """Under ``model.tasks.caption_vocabulary: training_captions``, fill ``caption_token_ids`` from the
    training captions of the captioning dataset, once: a resumed run keeps the ids it saved."""
    options = run.model.tasks
    if options.caption_vocabulary != "training_captions" or options.caption_token_ids:
        return
    if train_rows(manifest, "captioning") == 0:
        raise ConfigError("model.tasks.caption_vocabulary", f"training_captions needs training captions, and dataset "
                                                            f"{TASKS['captioning'].dataset!r} has no 'train' rows")
    options.caption_token_ids = training_caption_token_ids(root, TASKS["captioning"].dataset,
                                                           tokenizer_for(run.model.text))


def prepare_run(config_path: str | None, overrides: list[str], *, out: str | None = None,
                address: str | None = None) -> tuple[RunConfig, Path, Path]:
    """Load and validate the config, connect to Ray, make the data ready → (run, run folder, data root)."""
    run = load_run_config(config_path, overrides)
    out_dir = Path(out or run.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    previous = out_dir / "run_config.yaml"
    if previous.is_file():  # resuming: the saved config wins, command-line overrides still apply
        run = load_run_config(previous, overrides)
    root, manifest = resolve_data(run)
    if not run.model.class_names:
        run.model.class_names = {k: list(v) for k, v in manifest["class_names"].items()}
    config_io.validate(run)
    check_data(run, manifest)
    resolve_caption_vocabulary(run, root, manifest)
    run.out = str(out_dir)
    run.data.root = str(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(run, previous)
    ray_runtime.connect(address or run.scale.address)
    return run, out_dir, root
