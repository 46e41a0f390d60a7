"""One multi-task training step — the training loop's and every benchmark's — in plain PyTorch.

    step = TrainingStep(loss_module=ddp_or_task_loss, optimizer=optimizer,
                        omegas={"retrieval": 1.0, ...}, ratios={"retrieval": 0.2, ...})
    outcome = step("retrieval", collated_batch)       # → StepOutcome(loss, terms, finite)

zero grads → forward (the task's weighted loss) → backward → one global gradient norm, whose finiteness decides
whether the update is taken → the optimizer:
- MT-AdamW (the paper's): DDP has averaged the gradients; g = ω_k ∇L_k / ‖∇L_k‖, moments with β/s_k;
- ``mixed`` sampling (ablation): each worker trains its own task, so backward skips DDP's average; every worker
  forms ω_k g_k/‖g_k‖ itself, the results are averaged, and the optimizer applies them as they are;
- plain AdamW (the ablation without it): ω_k scales the raw gradient, s_k only sets how often a task is drawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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
    """The weighted total loss, detached (0-d, on the model's device: reading it syncs)."""
    terms: dict[str, torch.Tensor]
    """The task's unweighted loss terms."""
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

    def __call__(self, task: str, batch: dict[str, Any], *,
                 loss_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepOutcome:
        """``loss_hook`` may replace the loss before backward (tests inject non-finite losses with it)."""
        self.optimizer.zero_grad(set_to_none=True)
        # Mixed: forward and backward without DDP's all-reduce; the normalized gradients are averaged below.
        with self.loss_module.no_sync() if self.mixed else contextlib.nullcontext():
            with self.autocast:
                loss, terms = self.loss_module(task, batch, gather=self.gather)
            if loss_hook is not None:
                loss = loss_hook(loss)
            loss.backward()
        omega, s = self.omegas[task], self.ratios[task]
        if self.mixed:  # each worker weights its own task's gradient, then the workers' are averaged
            average_task_gradients(self.parameters, omega, normalize=isinstance(self.optimizer, MTAdamW))
        # The reduced gradient is identical on every rank, so every rank takes the same decision. One norm:
        # MT-AdamW normalizes with it too.
        norm = global_grad_norm(self.parameters)
        finite = bool(torch.isfinite(norm))
        if finite:
            self._update(omega, s, norm)
        return StepOutcome(loss=loss.detach(), terms=terms, finite=finite)

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
