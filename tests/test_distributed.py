"""Retrieval's cross-worker gather on a real 2-process gloo group: unequal batch sizes, exact gradients; and the
mixed sampling mode's weighting and averaging of each worker's own task gradient.

Two ranks hold 3 and 1 rows (as when one worker dropped corrupt images). Each computes the symmetric InfoNCE
of its rows against everyone's; the gradients averaged over ranks (what DDP does) must equal one process's
gradient of the mean of the two losses.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from unip2.distributed import average_task_gradients, gather_with_grad

ROWS = (3, 1)


def encoders() -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)
    return torch.nn.Linear(6, 4).double(), torch.nn.Linear(5, 4).double()


def inputs(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(10 + rank)
    return (torch.randn(ROWS[rank], 6, generator=generator, dtype=torch.double),
            torch.randn(ROWS[rank], 5, generator=generator, dtype=torch.double))


def info_nce(images, texts, all_images, all_texts, offset) -> torch.Tensor:
    targets = torch.arange(images.shape[0]) + offset
    return 0.5 * (F.cross_entropy(images @ all_texts.T * 10, targets)
                  + F.cross_entropy(texts @ all_images.T * 10, targets))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    image_encoder, text_encoder = encoders()
    pixels, words = inputs(rank)
    images, texts = image_encoder(pixels), text_encoder(words)
    all_images, offset = gather_with_grad(images)
    all_texts, _ = gather_with_grad(texts)
    assert all_images.shape[0] == sum(ROWS) and offset == sum(ROWS[:rank])
    info_nce(images, texts, all_images, all_texts, offset).backward()
    grads = [p.grad for p in (*image_encoder.parameters(), *text_encoder.parameters())]
    for grad in grads:  # DDP's average
        dist.all_reduce(grad)
        grad /= 2
    if rank == 0:
        torch.save(grads, out)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gather_with_unequal_batches_gives_the_exact_gradient(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
    distributed = torch.load(out)

    image_encoder, text_encoder = encoders()
    features = [(image_encoder(p), text_encoder(w)) for p, w in (inputs(0), inputs(1))]
    all_images = torch.cat([f[0] for f in features])
    all_texts = torch.cat([f[1] for f in features])
    losses = [info_nce(images, texts, all_images, all_texts, sum(ROWS[:rank]))
              for rank, (images, texts) in enumerate(features)]
    (sum(losses) / 2).backward()
    expected = [p.grad for p in (*image_encoder.parameters(), *text_encoder.parameters())]
    for got, want in zip(distributed, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_single_process_gather_is_the_identity():
    x = torch.randn(3, 4)
    gathered, offset = gather_with_grad(x)
    assert gathered is x and offset == 0


OMEGAS = (2.0, 0.5)  # rank r trains a task of weight OMEGAS[r]


def rank_gradients(rank: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + rank)
    return [torch.randn(3, 2, generator=generator, dtype=torch.double),
            torch.randn(4, generator=generator, dtype=torch.double)]


def _average_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for normalize in (True, False):
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in rank_gradients(rank)]
        for p, g in zip(params, rank_gradients(rank)):
            p.grad = g.clone()
        average_task_gradients(params, OMEGAS[rank], normalize=normalize)
        results[normalize] = [p.grad for p in params]
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_mixed_mode_averages_each_workers_weighted_gradient(tmp_path):
    out = str(tmp_path / "averaged.pt")
    mp.spawn(_average_worker, args=(free_port(), out), nprocs=2, join=True)
    averaged = torch.load(out)

    def flat(rank):
        return torch.cat([g.reshape(-1) for g in rank_gradients(rank)])

    normalized = sum(OMEGAS[r] * flat(r) / flat(r).norm() for r in (0, 1)) / 2  # MT-AdamW's mixed mode
    raw = sum(OMEGAS[r] * flat(r) for r in (0, 1)) / 2                          # plain AdamW's
    for normalize, want in ((True, normalized), (False, raw)):
        got = torch.cat([g.reshape(-1) for g in averaged[normalize]])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
