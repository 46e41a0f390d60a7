"""What a sweep maximizes: each task's headline validation metric relative to the uniform-weight baseline.

    objective = mean_k (m_k + δ) / (b_k + δ)

m_k is the trial's ``TASKS[k].metric`` on the validation split, b_k the baseline's (ω = s = 1, same
budget), δ = ``floor`` (metrics are fractions in [0, 1], CIDEr a little above): 1.0 = as good as the
baseline on average. δ keeps a zero baseline (an untrained detector's AP) from dividing by zero and
damps the noise of tiny scores.

ASHA compares trials before they finish, on ``progress`` = mean_k L_k^baseline / L_k^trial, the training
losses at the same step (> 1: the trial fits its tasks faster than the baseline).
"""

from __future__ import annotations

import math

from unip2.tasks import TASKS

OBJECTIVE = "objective"
"""Result key of the relative mean (the default sweep metric)."""
PROGRESS = "progress"
"""Result key of the training-loss ratio reported at every checkpoint (ASHA's metric)."""
FLOOR = 0.05
"""Default δ: 5 points of a metric in [0, 1]."""


def metric_key(task: str) -> str:
    """Result key of a task's headline metric, e.g. ``detection/bbox_AP``."""
    return f"{task}/{TASKS[task].metric}"


def sweep_metrics(tasks: list[str]) -> list[str]:
    """Every metric name a sweep over ``tasks`` reports: the objective, then each task's headline metric."""
    return [OBJECTIVE, *(metric_key(task) for task in tasks)]


def check_metric(name: str, tasks: list[str]) -> str:
    """``name`` if some task of the sweep (or the objective) reports it; refused otherwise."""
    valid = sweep_metrics(tasks)
    if name not in valid:
        raise ValueError(f"metric {name!r}: no task of this sweep reports it; valid: {', '.join(valid)}")
    return name


def task_scores(evaluation: dict, tasks: list[str]) -> dict[str, float]:
    """``pipelines.evaluation.pipeline.evaluate``'s result → {``<task>/<metric>``: value} (NaN where not evaluated)."""
    scores = {}
    for task in tasks:
        value = evaluation.get(task, {}).get(TASKS[task].metric)
        scores[metric_key(task)] = float(value) if value is not None else math.nan
    return scores


def relative_objective(scores: dict[str, float], baseline: dict[str, float], *, floor: float = FLOOR) -> float:
    """Mean over the baseline's metrics of (m + δ) / (b + δ); a NaN metric counts as 0 (COCO's -1 too)."""
    ratios = []
    for key, reference in baseline.items():
        value = scores.get(key, math.nan)
        value = 0.0 if math.isnan(value) or value < 0 else value
        reference = 0.0 if math.isnan(reference) or reference < 0 else reference
        ratios.append((value + floor) / (reference + floor))
    return sum(ratios) / len(ratios)


def loss_progress(losses: dict[str, float], reference: dict[str, float]) -> float | None:
    """Mean over tasks present in both of baseline loss / trial loss; None when no task is shared.

    ``losses`` and ``reference`` are ``{"loss/<task>": value}`` windows reported at the same step.
    """
    ratios = [reference[key] / value for key, value in losses.items()
              if key in reference and value > 0 and math.isfinite(value) and math.isfinite(reference[key])]
    return sum(ratios) / len(ratios) if ratios else None
