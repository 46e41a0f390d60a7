"""Chance level of every ablation column on the data the trials are evaluated on: each task's own
``chance_levels`` (the formulas: ``unip2.eval.chance``), keyed like the trial rows (``<task>/<metric>``)."""

from __future__ import annotations

from pathlib import Path

from unip2.eval.chance import ChanceData
from unip2.tasks import TASKS


def chance_levels(data_root: str | Path, tasks: list[str], *, split: str = "val", max_images: int | None = None,
                  draws: int = 3) -> dict[str, float]:
    """``<task>/<metric>`` → chance level, for the columns of ``tasks`` whose data the split has, on the first
    ``max_images`` rows of each dataset's split (as the trials are evaluated; None = all)."""
    data = ChanceData(Path(data_root), split=split, max_images=max_images, draws=draws)
    return {f"{task}/{metric}": level for task in tasks
            for metric, level in TASKS[task].chance_levels(data).items()}
