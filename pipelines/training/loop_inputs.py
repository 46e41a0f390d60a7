"""What the per-worker loops (training, stage-1 pretraining) receive: data only.

Kept apart from ``pipelines.training.loop`` so that the process that starts a TorchTrainer (a driver, a Tune trial
actor) does not import the model, timm and transformers (~3 s in a fresh process): only the workers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipelines.data.stream_spec import StreamSpec

if TYPE_CHECKING:
    import torch


class LoopHooks:
    """Callbacks into the loop at each step; a normal run has these no-ops. Tests pass a subclass to
    ``pipelines.training.trainer.fit(hooks=...)`` to inject a failure or a non-finite loss, or to record what each
    worker trained."""

    def before_step(self, step: int, rank: int) -> None:
        """Called as a worker enters ``step`` (before its batch is used)."""

    def on_batch(self, step: int, rank: int, task: str, batch: dict) -> None:
        """A collated batch a worker trains at ``step`` (each of its micro-batches in turn, see
        ``train.accumulation_steps``)."""

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """The loss before backward; what this returns is what trains."""
        return loss


@dataclass(frozen=True)
class LoopInputs:
    """Everything a worker's loop receives (``pipelines.training.trainer`` binds it)."""

    stream: StreamSpec
    """The run config and its resolved data stream."""
    hooks: LoopHooks = field(default_factory=LoopHooks)


METRICS = "metrics.json"
"""Stage 1's result: the encoders' validation accuracy and training curves, beside the weights."""


@dataclass(frozen=True)
class PretrainInputs:
    """What every worker's stage-1 loop receives (``pipelines.stage1.encoders`` binds it)."""

    stream: StreamSpec
    """The stage-1 run (its tasks: the encoders' tasks) and its resolved data stream."""
    class_names: list[str]
    """The classifier's label names, in label order."""
