"""One multi-task training step — the training loop's and every benchmark's — in plain PyTorch.

    step = TrainingStep(loss_module=ddp_or_task_loss, optimizer=optimizer,
                        omegas={"retrieval": 1.0, ...}, ratios={"retrieval": 0.2, ...})
    outcome = step("retrieval", collated_batch)       # → StepOutcome(loss, terms, finite)
    outcome = step("retrieval", [micro_batch_1, micro_batch_2])   # gradient accumulation (train.accumulation_steps)

zero grads → forward (the task's weighted loss) → backward, per micro-batch (losses scaled by 1/A, DDP's all-reduce
only after the last) → one global gradient norm, whose finiteness decides whether the update is taken → the
optimizer:
- MT-AdamW (the paper's): DDP has averaged the gradients; g = ω_k ∇L_k / ‖∇L_k‖, moments with β/s_k;
- ``mixed`` sampling (ablation): each worker trains its own task, so backward skips DDP's average; every worker
  forms ω_k g_k/‖g_k‖ itself, the results are averaged, and the optimizer applies them as they are;
- plain AdamW (the ablation without it): ω_k scales the raw gradient, s_k only sets how often a task is drawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unip2.distributed import average_task_gradients
from unip2.optim import MTAdamW, global_grad_norm
from unip2.tasks.base import Gather, local_gather


@dataclass
class StepOutcome:
    loss: torch.Tensor
    """The weighted total loss, detached (0-d, on the model's device: reading it syncs); the micro-batches' mean."""
    terms: dict[str, torch.Tensor]
    """The task's unweighted loss terms (the micro-batches' mean)."""
    finite: bool
    """False: the loss or gradient was not finite and the update was skipped."""


class TrainingStep:
    """Callable ``(task, batch) → StepOutcome`` for one model, its loss module (``TaskLoss`` or DDP around it)
    and optimizer."""

    def __init__(self, *, loss_module: nn.Module, optimizer: torch.optim.Optimizer, omegas: dict[str, float],
                 ratios: dict[str, float], mixed: bool = False, gather: Gather = local_gather,
                 autocast: contextlib.AbstractContextManager | None = None):
        self.loss_module, self.optimizer = loss_module, optimizer
        self.omegas, self.ratios, self.mixed, self.gather = omegas, ratios, mixed, gather
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, task: str, batch: dict[str, Any] | Sequence[dict[str, Any]], *,
                 loss_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepOutcome:
        """``batch``: one collated batch, or a list of micro-batches of ``task`` whose gradients are accumulated
        into one step (equal to the whole batch's when the task's loss is a mean over equal micro-batches).
        ``loss_hook`` may replace each micro-batch's loss before backward (tests inject non-finite losses)."""
        micro_batches = [batch] if isinstance(batch, dict) else list(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses, terms = [], []
        for index, micro_batch in enumerate(micro_batches):
            # Mixed: no DDP all-reduce at all (the normalized gradients are averaged below); accumulating: only
            # the last backward all-reduces, the sum of the micro-batches' gradients.
            last = index == len(micro_batches) - 1
            with self._no_sync() if self.mixed or not last else contextlib.nullcontext():
                with self.autocast:
                    loss, micro_terms = self.loss_module(task, micro_batch, gather=self.gather)
                if loss_hook is not None:
                    loss = loss_hook(loss)
                (loss / len(micro_batches)).backward()
            losses.append(loss.detach())
            terms.append(micro_terms)
        omega, s = self.omegas[task], self.ratios[task]
        if self.mixed:  # each worker weights its own task's gradient, then the workers' are averaged
            average_task_gradients(self.parameters, omega, normalize=isinstance(self.optimizer, MTAdamW))
        # The reduced gradient is identical on every rank, so every rank takes the same decision. One norm:
        # MT-AdamW normalizes with it too.
        norm = global_grad_norm(self.parameters)
        finite = bool(torch.isfinite(norm))
        if finite:
            self._update(omega, s, norm)
        return StepOutcome(loss=torch.stack(losses).mean(), terms=_mean_terms(terms), finite=finite)

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` (backward without the all-reduce); a module without DDP (one process) has none."""
        no_sync = getattr(self.loss_module, "no_sync", None)
        return no_sync() if no_sync is not None else contextlib.nullcontext()

    def _update(self, omega: float, s: float, norm: torch.Tensor) -> None:
        if isinstance(self.optimizer, MTAdamW):
            if self.mixed:  # already ω·g/‖g‖, averaged over workers
                self.optimizer.step(omega=1.0, s=1.0, normalize=False)
            else:
                self.optimizer.step(omega=omega, s=s, grad_norm=norm)
            return
        if not self.mixed:  # plain AdamW (ablation): ω scales the raw gradient (mixed: already applied)
            for p in self.parameters:
                if p.grad is not None:
                    p.grad.mul_(omega)
        self.optimizer.step()


def _mean_terms(terms: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each loss term's mean over the micro-batches (one micro-batch: its terms as they are)."""
    if len(terms) == 1:
        return terms[0]
    return {name: torch.stack([t[name].detach().float() for t in terms]).mean() for name in terms[0]}
