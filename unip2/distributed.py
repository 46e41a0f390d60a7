"""torch.distributed helpers the multi-task method needs (no Ray here; any launcher sets up the group).

* ``gather_with_grad``: retrieval negatives from every worker, gradients kept for the local rows.
* ``normalize_and_average_gradients``: the ``mixed`` sampling mode, where each worker trains its own
  task: ω_k·g_k/‖g_k‖ is formed locally, then averaged over workers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from unip2.optim import global_grad_norm


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """B×D from every rank → (W·B×D, offset of this rank's rows). Equal B on every rank is required."""
    rank, size = world()
    if size == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x  # the local slice keeps its graph; other ranks' rows are constants here
    return torch.cat(parts), rank * x.shape[0]


def normalize_and_average_gradients(parameters: list[torch.nn.Parameter], omega: float) -> torch.Tensor:
    """grad ← mean over ranks of ω·grad/‖grad‖ (one global norm per rank). Returns the local norm.

    Parameters without a gradient contribute zeros, so every rank reduces the same flat buffer.
    """
    params = [p for p in parameters if p.requires_grad]
    norm = global_grad_norm(params)
    scale = omega / norm.clamp_min(1e-12)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * scale
    _, size = world()
    if size > 1:
        dist.all_reduce(flat)
        flat /= size
    offset = 0
    for p in params:
        count = p.numel()
        p.grad = flat[offset:offset + count].view_as(p).clone()
        offset += count
    return norm
