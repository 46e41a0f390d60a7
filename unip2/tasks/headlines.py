"""The metrics a task is judged by, as every report shows them: the evaluation report's Table 6 layout, the
ablation tables, the default run's benchmark goals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    """One metric of a task's ``evaluate`` that reports show."""

    metric: str
    """Key in the task's metrics."""
    label: str
    """Short column label in tables (``det AP``)."""
    description: str = ""
    """What it measures, in a few words (``box AP``); the label when empty."""
    paper_column: str | None = None
    """The paper's Table 6 column the task's own evaluation fills (``report.md``)."""
    zero_shot_paper_column: str | None = None
    """The Table 6 column its zero-shot evaluation (``Task.zero_shot_splits``) fills."""
    default_run_goal: str | None = None
    """The default run's goal for it (``>= 0.5``), which ``benchmarks/default_run.py`` checks."""
    benchmark_key: str | None = None
    """That benchmark's result key (kept stable across releases: the results history is keyed by it)."""

    @property
    def said(self) -> str:
        return self.description or self.label
