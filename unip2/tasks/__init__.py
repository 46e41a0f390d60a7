"""The one task registry: a plain dict from task name to its implementation.

Pipelines, Tune search spaces, Serve routes and tests iterate over ``TASKS``; nobody else keeps a list
of task names. Adding a task = one file implementing ``unip2.tasks.base.Task`` and one line here.
"""

from __future__ import annotations

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


__all__ = ["TASKS", "Task", "get_task", "total_loss"]
