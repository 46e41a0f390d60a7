"""PB2 (Population Based Bandits) for ``tune/pbt.py --scheduler pb2``: imported only when asked for, since Ray's PB2
needs GPy and scikit-learn (not installed by default)."""

from __future__ import annotations

from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.pb2 import PB2


class KeepsTheLastStepPB2(PB2):
    """PB2 that leaves a member alone at the run's last step (as ``tune.population.KeepsTheLastStep``)."""

    def __init__(self, *, last_step: int, step_key: str, **options):
        super().__init__(**options)
        self.last_step, self.step_key = last_step, step_key

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self.step_key, 0) >= self.last_step:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def bounds_of(params: dict) -> dict:
    """Nested Tune domains → the same nesting of [lower, upper] (PB2's ``hyperparam_bounds``, nested like the
    config it fills)."""
    return {key: bounds_of(value) if isinstance(value, dict) else [value.lower, value.upper]
            for key, value in params.items()}


def pb2_scheduler(mutations: dict, *, last_step: int, time_attr: str, **options) -> KeepsTheLastStepPB2:
    return KeepsTheLastStepPB2(last_step=last_step, step_key=time_attr, time_attr=time_attr,
                               hyperparam_bounds=bounds_of(mutations), **options)
