"""The pieces of a multi-task training step that any launcher needs: optimizer, schedule, task loss module.

``TaskLoss`` wraps the model so that one ``forward(task, batch)`` computes a task's weighted loss; a
DistributedDataParallel wrapper around it then synchronizes gradients for every task the same way.
"""

from __future__ import annotations

from contextlib import contextmanager

import math

import torch
from torch import nn

from unip2 import schedules
from unip2.optim import MTAdamW, param_groups_for
from unip2.tasks import TASKS, total_loss
from unip2.tasks.base import Gather, local_gather


class TaskLoss(nn.Module):
    """forward(task name, collated batch) → (weighted total loss, dict of unweighted terms)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, task: str, batch: dict, gather: Gather = local_gather) -> tuple[torch.Tensor, dict]:
        terms = TASKS[task].loss(self.model, batch, gather=gather)
        return total_loss(terms, TASKS[task].loss_weights(self.model)), terms


# Heavy modules that trace as one graph for every task (tests/model/test_static_graphs.py), compiled whole.
COMPILED_MODULES = ("backbone", "proposals", "global_tokens", "regional_tokens", "text_encoder", "decoder")
# Text batches of a compiled run are padded to a multiple of this (TextTokenizer.pad_to_multiple_of): with texts
# of at most 32 tokens, 4 lengths per task.
TEXT_LENGTH_MULTIPLE = 8
# Graphs one module may hold: each task's shapes (its sequence layout, the text-length buckets, candidate chunks)
# compile once; past this dynamo would fall back to eager for new shapes.
RECOMPILE_LIMIT = 64


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` every heavy module in place (``Module.compile``, static shapes: one graph per task and
    input shape, bounded by the text-length buckets): the state dict keeps its names, so checkpoints and DDP see
    the same parameters."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           RECOMPILE_LIMIT * len(COMPILED_MODULES))
    for name in COMPILED_MODULES:
        getattr(model, name).compile(dynamic=False)
    return model


@contextmanager
def running_eagerly(model: nn.Module):
    """Inside, the compiled modules run their plain forward: a validation of a few images would otherwise compile
    every task's inference graphs (minutes on a CPU) for seconds of work. Their compiled graphs stay for training."""
    saved = {name: getattr(model, name)._compiled_call_impl for name in COMPILED_MODULES}
    for name in saved:
        getattr(model, name)._compiled_call_impl = None
    try:
        yield model
    finally:
        for name, compiled in saved.items():
            getattr(model, name)._compiled_call_impl = compiled


def build_optimizer(model: nn.Module, *, name: str, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, backbone_lr_scale: float = 1.0,
                    text_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """MT-AdamW (or AdamW) with no-decay groups; the image backbone's groups carry ``lr_scale`` =
    backbone_lr_scale, the text encoder's (its projection to the decoder width aside) text_lr_scale."""
    scales = {"backbone.": backbone_lr_scale, "text_encoder.model.": text_lr_scale}

    def scale_of(param_name: str) -> float:
        return next((s for prefix, s in scales.items() if param_name.startswith(prefix)), 1.0)

    groups = []
    for group in param_groups_for(model, weight_decay):
        by_scale: dict[float, list] = {}
        for n, p in zip(group["param_names"], group["params"]):
            by_scale.setdefault(scale_of(n), []).append((n, p))
        for lr_scale, picked in by_scale.items():
            groups.append({"params": [p for _, p in picked], "param_names": [n for n, _ in picked],
                           "weight_decay": group["weight_decay"], "lr_scale": lr_scale, "lr": lr * lr_scale})
    if name == "mt_adamw":
        return MTAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {name!r}; choose mt_adamw or adamw")


def optimizer_for(model: nn.Module, optim) -> torch.optim.Optimizer:
    """``build_optimizer`` with a run's ``OptimConfig`` (``unip2.run_config``)."""
    return build_optimizer(model, name=optim.name, lr=schedules.value_at(optim.lr, 0), betas=optim.betas, eps=optim.eps,
                           weight_decay=optim.weight_decay, backbone_lr_scale=optim.backbone_lr_scale,
                           text_lr_scale=optim.text_lr_scale)


def learning_rate(step: int, *, total_steps: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak × min_ratio`` at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
