"""Task interference, the measure of Uni-Perceiver-MoE: how one task's update changes another task's loss.

With the learning rate at 0 (the parameters never move), the gradients g_k^b of every task k's loss on
chosen parameters (the decoder FFN weights by default) are collected over b = 1..B batches of its
training data. A normalized step of task i along u_i = E_b[g_i^b / ‖g_i^b‖] changes task j's loss by
Δ_ij ≈ −λ u_i·g_j (first order), so the normalized gradient effect is

    δ_ij = (u_i · ḡ_j) / (u_j · ḡ_j),     ḡ_j = E_b[g_j^b]

(estimated as a ratio of the means over batches, which stays finite where single batches disagree).
δ_jj = 1; δ_ij > 0: task i's update also lowers task j's loss (collaboration); δ_ij < 0: it raises it
(interference). Rows are the task that updates, columns the task whose loss changes.

Runs in-process in plain PyTorch on the real model (a checkpoint), tasks and training data: no Ray.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

import unip2
from unip2.data.row_reader import RowReader
from unip2.tasks import TASKS
from unip2.tasks.base import input_options
from unip2.training_setup import TaskLoss

DECODER_FFN = r"^decoder\.layers\.\d+\.ffn\.w[12]$"
"""Default parameters measured: every decoder layer's FFN weight matrices (all experts)."""


def gradient_effect_matrix(gradients: dict[str, torch.Tensor]) -> np.ndarray:
    """gradients: {task: B_k×P per-batch gradients} → K×K δ (row i updates, column j's loss changes).

    A task whose gradients are all zero (no parameter measured is used by it) gets NaN rows and columns.
    """
    names = list(gradients)
    units, means = [], []
    for name in names:
        g = gradients[name].double()  # B×P
        norms = g.norm(dim=1, keepdim=True)
        units.append(torch.where(norms > 0, g / norms.clamp_min(1e-30), torch.zeros_like(g)).mean(0))  # P
        means.append(g.mean(0))  # P
    u, m = torch.stack(units), torch.stack(means)  # K×P each
    effect = u @ m.T  # K×K: effect[i, j] = u_i · ḡ_j
    own = effect.diagonal()  # u_j · ḡ_j
    matrix = effect / own.unsqueeze(0)
    matrix[:, own == 0] = math.nan
    return matrix.numpy()


def interference_summary(matrix: np.ndarray) -> dict[str, float]:
    """Off-diagonal statistics of δ: mean, mean |δ|, interference = mean of max(−δ, 0), share of δ < 0."""
    off = matrix[~np.eye(len(matrix), dtype=bool)]
    off = off[np.isfinite(off)]
    if off.size == 0:
        return {"mean": math.nan, "mean_abs": math.nan, "interference": math.nan, "negative_share": math.nan}
    return {"mean": float(off.mean()), "mean_abs": float(np.abs(off).mean()),
            "interference": float(np.maximum(-off, 0).mean()), "negative_share": float((off < 0).mean())}


@dataclass
class InterferenceSettings:
    batches: int = 8
    """Batches per task whose gradients are collected (steps at learning rate 0)."""
    batch_size: int = 16
    """Rows per batch (one training step's batch over all workers)."""
    params: str = DECODER_FFN
    """Regular expression over parameter names: the parameters whose gradients are compared."""
    seed: int = 0
    """Seed of the rows drawn and of their augmentation."""
    threads: int = 1
    """torch intra-op threads while measuring (more threads than free cores is many times slower)."""


def measured_parameters(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Parameter]]:
    chosen = [(n, p) for n, p in model.named_parameters() if re.search(pattern, n)]
    if not chosen:
        raise ValueError(f"no parameter name matches {pattern!r}")
    return chosen


def collect_task_gradients(model, tasks: list[str], data_root, settings: InterferenceSettings) -> dict[str, torch.Tensor]:
    """{task: B×P gradients of its weighted loss on the measured parameters}, one row per batch."""
    chosen = measured_parameters(model, settings.params)
    loss_module = TaskLoss(model)
    model.train()
    gradients = {}
    for index, name in enumerate(tasks):
        task = TASKS[name]
        reader = RowReader(data_root, task.dataset, "train")
        rng = np.random.default_rng([settings.seed, index])
        rows = []
        for _ in range(settings.batches):
            ids = rng.choice(reader.num_rows, size=min(settings.batch_size, reader.num_rows), replace=False)
            inputs = input_options(model.config.task_input_settings(name))  # as the model trained
            batch = task.collate(task.preprocess(reader.read(ids), **inputs, tokenizer=model.tokenizer, train=True,
                                                 rng=rng))
            model.zero_grad(set_to_none=True)
            loss, _ = loss_module(name, batch)
            loss.backward()  # learning rate 0: gradients are read, the parameters never move
            rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                   for _, p in chosen]).detach().clone())
        gradients[name] = torch.stack(rows)
    model.zero_grad(set_to_none=True)
    return gradients


def measure_interference(checkpoint_dir, data_root, tasks: list[str], settings: InterferenceSettings) -> dict:
    """δ of a saved model (``unip2.save`` folder) on the training data → {"tasks", "matrix" (K×K list),
    "summary", "parameters" (names), "num_parameters", "batches", "batch_size", "checkpoint"}."""
    torch.manual_seed(settings.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        model = unip2.load(checkpoint_dir)
        gradients = collect_task_gradients(model, tasks, data_root, settings)
    finally:
        torch.set_num_threads(threads)
    matrix = gradient_effect_matrix(gradients)
    chosen = measured_parameters(model, settings.params)
    return {"tasks": list(tasks), "matrix": matrix.tolist(), "summary": interference_summary(matrix),
            "parameters": [n for n, _ in chosen], "num_parameters": sum(p.numel() for _, p in chosen),
            "batches": settings.batches, "batch_size": settings.batch_size, "checkpoint": str(checkpoint_dir)}
