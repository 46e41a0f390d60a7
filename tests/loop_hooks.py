"""Training-loop hooks the tests pass to ``pipelines.training.trainer.fit(hooks=...)``: a worker failure injected once,
non-finite losses, and a trace of what every worker trained at each step.

Ray's workers cannot import the tests, so this module is pickled by value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ray.cloudpickle
import torch

from pipelines.training.loop_inputs import LoopHooks


class FaultHooks(LoopHooks):
    """``fail_at_step``: rank 0 raises once as it enters that step (``fail_marker`` is created then, so a
    resumed run passes). ``nan_steps``: those steps' losses become NaN. ``trace_dir``: each rank appends
    ``step task image-id image-id ...`` lines to ``rank<r>.txt`` there."""

    def __init__(self, *, fail_at_step: int | None = None, fail_marker: str | Path | None = None,
                 trace_dir: str | Path | None = None, nan_steps: tuple[int, ...] = ()):
        self.fail_at_step, self.nan_steps = fail_at_step, tuple(nan_steps)
        self.fail_marker = Path(fail_marker) if fail_marker else None
        self.trace_dir = Path(trace_dir) if trace_dir else None

    def before_step(self, step: int, rank: int) -> None:
        if rank == 0 and step == self.fail_at_step and not self.fail_marker.exists():
            self.fail_marker.write_text(str(step))
            raise RuntimeError(f"test-only failure injected at step {step}")

    def on_batch(self, step: int, rank: int, task: str, batch: dict) -> None:
        if self.trace_dir is not None:
            with open(self.trace_dir / f"rank{rank}.txt", "a") as handle:
                handle.write(f"{step} {task} {' '.join(str(int(i)) for i in batch['image_id'])}\n")

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step in self.nan_steps else loss


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
