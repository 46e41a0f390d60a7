"""What a task's ``evaluate`` receives: its predictions over a split with the rows' annotations, and the split's
context (class names, annotation files, where to write result files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TaskOutput:
    """One task's predictions over the evaluated (decodable) rows, with the rows' annotations, aligned."""

    predictions: list[dict]
    annotations: dict[str, list] = field(default_factory=dict)
    """The task's ``eval_columns`` of the same rows (e.g. ``label``, ``captions``), one entry per prediction."""


@dataclass
class MetricContext:
    out_dir: Path
    """Where result files (COCO results JSON, captions) are written."""
    data_class_names: dict[str, list[str]]
    """The data's classes per label space (manifest ``class_names``)."""
    category_ids: list[int] = field(default_factory=list)
    """COCO category id of each ``data_class_names["coco"]`` entry."""
    annotation_files: dict[str, Path] = field(default_factory=dict)
    """The split's annotation files in their original format, by kind (``instances``, ``captions``)."""
    meteor: bool = True
    """Compute METEOR among the caption metrics (a Java process, ~10 s)."""
