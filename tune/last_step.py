"""What PBT and PB2 share here: a member is left alone at the run's last step. Nothing is left to train there,
and a copy then would only replace the member's own lineage by another's."""

from __future__ import annotations

from ray.tune.schedulers import TrialScheduler


class LeavesTheLastStepAlone:
    """Put before a PBT-family scheduler in the bases; ``last_step`` is in the scheduler's ``time_attr`` units."""

    def __init__(self, *, last_step: int, **options):
        super().__init__(**options)
        self.last_step = last_step

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.last_step:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
