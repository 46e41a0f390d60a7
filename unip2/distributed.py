"""torch.distributed helpers the multi-task method needs (no Ray here; any launcher sets up the group).

* ``gather_with_grad``: retrieval negatives from every worker (batch sizes may differ), exact gradients.
* ``average_task_gradients``: the ``mixed`` sampling mode, where each worker trains its own task:
  ω_k·g_k/‖g_k‖ (MT-AdamW) or ω_k·g_k (plain AdamW) is formed locally, then averaged over workers.
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
    """B_r×D from every rank r → (ΣB_r×D, offset of this rank's rows); batch sizes may differ between ranks
    (a worker that dropped a corrupt image has fewer rows).

    The gradient is exact: every rank's rows keep their graph (an all-gather whose backward sums each rank's
    gradient back to the rows' owner), so with DDP averaging the parameter gradients
    the result is the gradient of the mean of the workers' losses — not the local-slice approximation.
    """
    rank, size = world()
    if size == 1:
        return x, 0
    count = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]  # one tiny host sync: the shapes must be known to cut the padding
    longest = max(counts)
    padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))]) if x.shape[0] < longest else x
    parts = _AllGather.apply(padded)  # W×max(B)×D
    return torch.cat([part[:n] for part, n in zip(parts, counts)]), sum(counts[:rank])


class _AllGather(torch.autograd.Function):
    """All-gather whose backward hands every rank the sum, over ranks, of the gradient of its own rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank = rank
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss reaches every rank's rows (gloo has no reduce-scatter)
        return grad[ctx.rank]


def average_task_gradients(parameters: list[torch.nn.Parameter], omega: float, *, normalize: bool = True) -> None:
    """grad ← mean over ranks of ω·grad/‖grad‖ (``normalize``: one global norm per rank, MT-AdamW's
    normalization done before the workers' tasks are combined) or of ω·grad (plain AdamW: the raw gradient
    weighted, as in its unmixed steps).

    Parameters without a gradient contribute zeros, so every rank reduces the same flat buffer.
    """
    params = [p for p in parameters if p.requires_grad]
    scale = omega / global_grad_norm(params).clamp_min(1e-12) if normalize else omega
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
