"""PB2 (Population Based Bandits) for ``tune/pbt.py --scheduler pb2``: imported only when asked for, since Ray's PB2
needs GPy and scikit-learn (not installed by default)."""

from __future__ import annotations

from ray.tune.schedulers.pb2 import PB2

from tune.last_step import LeavesTheLastStepAlone


class KeepsTheLastStepPB2(LeavesTheLastStepAlone, PB2):
    """PB2 that leaves a member alone at the run's last step."""


def bounds_of(params: dict) -> dict:
    """Nested Tune domains → the same nesting of [lower, upper] (PB2's ``hyperparam_bounds``, nested like the
    config it fills)."""
    return {key: bounds_of(value) if isinstance(value, dict) else [value.lower, value.upper]
            for key, value in params.items()}


def pb2_scheduler(mutations: dict, *, last_step: int, time_attr: str, **options) -> KeepsTheLastStepPB2:
    return KeepsTheLastStepPB2(last_step=last_step, time_attr=time_attr,
                               hyperparam_bounds=bounds_of(mutations), **options)
