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


def test_accumulated_micro_batches_give_the_whole_batch_gradient(tiny_config):
    """Classification's loss is a mean over the batch: two halves, each scaled by 1/2, sum to the whole batch's
    gradient. (Eval mode: BatchNorm's batch statistics, like dropout, are not decomposable.)"""
    import numpy as np

    import unip2
    from unip2.tasks import TASKS
    from unip2.training_setup import TaskLoss

    torch.manual_seed(0)
    model = unip2.build_model(tiny_config).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(4, 3, 64, 64), dtype=np.uint8)
    labels = np.array([0, 3, 1, 3])
    collate = TASKS["classification"].collate
    # lr 0: the step leaves the weights alone, and its gradients stay in .grad until the next step zeroes them.
    step = TrainingStep(loss_module=TaskLoss(model), optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                        omegas={"classification": 1.0}, ratios={"classification": 1.0})
    runs = {}
    for name, parts in {"whole": [slice(0, 4)], "halves": [slice(0, 2), slice(2, 4)]}.items():
        outcome = step("classification", [collate({"images": images[p], "labels": labels[p]}) for p in parts])
        assert outcome.finite
        runs[name] = outcome.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    (whole_loss, whole), (halves_loss, halves) = runs["whole"], runs["halves"]
    torch.testing.assert_close(halves_loss, whole_loss)
    assert whole.keys() == halves.keys() and sum(g.norm() for g in whole.values()) > 0
    for name in whole:
        torch.testing.assert_close(halves[name], whole[name], rtol=1e-4, atol=1e-5, msg=name)  # float noise ~4e-6


class CountingSyncLoss(QuadraticLoss):
    """QuadraticLoss that counts the backward passes DDP would not all-reduce."""

    def __init__(self):
        super().__init__()
        self.unsynced = 0

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced += 1
        yield


def test_only_the_last_micro_batch_all_reduces():
    module = CountingSyncLoss()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    step = TrainingStep(loss_module=module, optimizer=optimizer, omegas={"a": 1.0}, ratios={"a": 1.0})
    targets = [torch.tensor([0.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, -2.0, 0.0])]
    outcome = step("a", [{"target": t} for t in targets])
    assert module.unsynced == 2  # micro-batches 1 and 2 of 3
    mean_gradient = sum(2 * (module.w.detach() - t) for t in targets) / 3
    torch.testing.assert_close(module.w.grad, mean_gradient)
    losses = torch.stack([((module.w - t) ** 2).sum() for t in targets]).detach()
    torch.testing.assert_close(outcome.loss, losses.mean())
    step("a", {"target": targets[0]})  # one batch: synced as before
    assert module.unsynced == 2
