"""TrainingStep's sampling modes with each optimizer, on one process: mixed and unmixed take the same step when
there is one worker (its own task is the whole step), for MT-AdamW and for plain AdamW."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from unip2.training_setup import build_optimizer
from unip2.training_step import TrainingStep


class QuadraticLoss(nn.Module):
    """loss = ‖w − target‖², with DDP's ``no_sync`` (a no-op on one process)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, task, batch, gather):
        loss = ((self.w - batch["target"]) ** 2).sum()
        return loss, {"loss": loss.detach()}

    @contextlib.contextmanager
    def no_sync(self):
        yield


@pytest.mark.parametrize("optimizer_name", ["mt_adamw", "adamw"])
def test_mixed_and_unmixed_steps_agree_on_one_worker(optimizer_name):
    weights = {}
    for mixed in (False, True):
        module = QuadraticLoss()
        optimizer = build_optimizer(module, name=optimizer_name, lr=0.1, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=0.0)
        step = TrainingStep(loss_module=module, optimizer=optimizer, omegas={"a": 0.5}, ratios={"a": 1.0},
                            mixed=mixed)
        for _ in range(3):
            outcome = step("a", {"target": torch.tensor([0.0, 0.0, 3.0])})
            assert outcome.finite
        weights[mixed] = module.w.detach().clone()
    assert not torch.equal(weights[False], torch.tensor([1.0, -2.0, 0.5]))  # it moved
    torch.testing.assert_close(weights[True], weights[False])
