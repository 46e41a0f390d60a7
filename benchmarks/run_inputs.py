"""What the benchmarks measure on: the default run's config, its data and one real batch per task.

    run = default_run(data_root, ["train.steps=60"])      # pipelines/configs/default.yaml + the data's names
    batches = task_batches(run, data_root, model.tokenizer)   # {task: numpy batch from ``preprocess``}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "pipelines" / "configs" / "default.yaml"


def vocabulary_task() -> str:
    """The task whose candidates are a vocabulary its options restrict (``vocabulary``, ``token_ids``: captioning)."""
    from unip2.tasks import tasks_with_option

    return next(name for name in tasks_with_option("vocabulary") if name in tasks_with_option("token_ids"))


def embedded_data() -> Path:
    """The default run's data folder (generated into ``.cache/unip2`` on first use, as train.py does)."""
    from unip2.data.embedded import ensure_embedded_data
    from unip2.run_config import load_run_config

    run = load_run_config(DEFAULT_CONFIG)
    return ensure_embedded_data(ROOT / run.data.cache_dir, seed=run.data.synthetic_seed)


def default_run(data_root: str | Path, overrides: list[str] = ()):
    """``default.yaml`` with ``overrides``, reading ``data_root``, with the data's class names."""
    from unip2 import config_io
    from unip2.data.manifest import load_manifest
    from unip2.run_config import load_run_config

    run = load_run_config(DEFAULT_CONFIG, [f"data.root={Path(data_root).resolve()}", *overrides])
    run.model.class_names = {k: list(v) for k, v in load_manifest(data_root)["class_names"].items()}
    config_io.validate(run)
    return run


def task_batches(run, data_root: str | Path, tokenizer, *, seed: int = 0) -> dict[str, dict]:
    """One training batch per task of ``run``: its batch size of the first training rows, augmented."""
    from unip2.data.row_reader import RowReader
    from unip2.tasks import TASKS
    from unip2.tasks.base import input_options

    out = {}
    for name in run.tasks:
        task = TASKS[name]
        reader = RowReader(data_root, task.dataset, "train")
        rows = np.arange(run.tasks[name].batch_size) % reader.num_rows
        out[name] = task.preprocess(reader.read(rows), **input_options(run.model.task_input_settings(name)),
                                    tokenizer=tokenizer, train=True, rng=np.random.default_rng(seed))
    return out
