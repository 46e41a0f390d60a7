"""The one task registry: a plain dict from task name to its implementation.

Pipelines, Tune search spaces, Serve routes and tests iterate over ``TASKS``; nobody else keeps a list
of task names. Adding a task = one file implementing ``unip2.tasks.base.Task`` and one line here.
"""

from __future__ import annotations

import dataclasses

from unip2.config import ModelConfig, TaskOptions
from unip2.config_io import require
from unip2.data.parquet_schema import SCHEMAS
from unip2.tasks.base import Task, total_loss
from unip2.tasks.captioning import Captioning
from unip2.tasks.classification import Classification
from unip2.tasks.detection import Detection
from unip2.tasks.instance_segmentation import InstanceSegmentation
from unip2.tasks.language_modelling import LanguageModelling
from unip2.tasks.retrieval import Retrieval

TASKS: dict[str, Task] = {
    "classification": Classification(),
    "detection": Detection(),
    "instance_segmentation": InstanceSegmentation(),
    "captioning": Captioning(),
    "retrieval": Retrieval(),
    "language_modelling": LanguageModelling(),
}


def get_task(name: str) -> Task:
    """The registered task ``name``; an unknown name is refused with the valid ones listed."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {', '.join(TASKS)}")
    return TASKS[name]


def dataset_schema(dataset: str):
    """The Arrow schema of ``dataset``: a built-in source's, else that of the task whose own dataset it is."""
    if dataset in SCHEMAS:
        return SCHEMAS[dataset]
    owner = next((task for task in TASKS.values() if task.dataset == dataset and task.dataset_schema is not None),
                 None)
    if owner is None:
        raise KeyError(f"no schema for dataset {dataset!r}: neither a built-in source nor a registered task's own")
    return owner.dataset_schema


def pretraining_task(encoder: str) -> str | None:
    """The task whose training data stage 1 pretrains ``encoder`` on (``Task.pretrains``), if any."""
    return next((name for name, task in TASKS.items() if task.pretrains == encoder), None)


def tasks_with_option(field: str) -> list[str]:
    """The registered tasks whose options have ``field`` (e.g. ``gather_negatives``)."""
    return [name for name, task in TASKS.items() if field in {f.name for f in dataclasses.fields(task.Options)}]


def options_class(name: str) -> type[TaskOptions]:
    """The options class of registered task ``name`` (KeyError naming the registered ones otherwise)."""
    if name not in TASKS:
        raise KeyError(f"unknown task; registered: {', '.join(TASKS)}")
    return TASKS[name].Options


OPTION_CLASSES = {TaskOptions: options_class}
"""``config_io``'s ``keyed_classes`` for anything holding a ``ModelConfig``: each task's own options class."""


def score_families() -> tuple[str, ...]:
    """The registered tasks' candidate families, in registry order (one learnable temperature each, shared by
    the tasks naming it: category names, vocabulary words, sentences vs images)."""
    return tuple(dict.fromkeys(task.candidate_family for task in TASKS.values()))


def with_registered_tasks(config: ModelConfig) -> ModelConfig:
    """``config`` with every registered task's options (the defaults of those it lacks) and, when it names none,
    the registry's score families. A saved model keeps its families: its temperatures were trained for them."""
    config.tasks = {name: task.Options() for name, task in TASKS.items() if name not in config.tasks} | config.tasks
    if not config.score_families:
        config.score_families = score_families()
    return config


def validate_task_options(config: ModelConfig, prefix: str = "") -> None:
    """Every entry of ``config.tasks`` names a registered task and holds that task's options class."""
    for name, options in config.tasks.items():
        require(name in TASKS, f"{prefix}tasks.{name}", f"unknown task; registered: {', '.join(TASKS)}")
        require(isinstance(options, TASKS[name].Options), f"{prefix}tasks.{name}",
                f"must be {TASKS[name].Options.__name__}")


def check_model(model) -> None:
    """Every task checks its options against a built model (e.g. captioning's candidate tokens against the
    tokenizer), so a wrong one fails when the model is built, not at its first use."""
    for task in TASKS.values():
        task.check(model)


__all__ = ["OPTION_CLASSES", "TASKS", "Task", "check_model", "dataset_schema", "get_task", "options_class", "pretraining_task", "tasks_with_option",
           "score_families", "total_loss", "validate_task_options", "with_registered_tasks"]
