"""MT-AdamW step time over ``torch.optim.AdamW(foreach=True)`` on the tiny model's parameters.

    python benchmarks/optimizer_step.py [--steps 10 --rounds 15 --threads 1]

Both optimizers get the same parameter groups (``build_optimizer``'s decay / no-decay, backbone / rest)
and the same fixed random gradient on every parameter. They step in alternating blocks of ``steps``
(``rounds`` blocks each, the order flipped every round), so a burst of load on the shared machine hits
both; each side's figure is its fastest block (the least disturbed), and the median of the per-round
ratios is kept in ``details``. One torch thread, as in a training worker.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.results_table import result  # noqa: E402

KEY = "optimizer_ratio"
MEASURE = "MT-AdamW step / AdamW(foreach=True) step"
GOAL = "<= 1.3"


def tiny_model(class_names: dict | None = None) -> torch.nn.Module:
    import unip2
    from unip2.data.shapes import CATEGORIES

    config = unip2.preset("tiny")
    names = [c.name for c in CATEGORIES]
    config.class_names = class_names or {"imagenet": names, "coco": names}
    torch.manual_seed(0)
    return unip2.build_model(config)


def _optimizers(model: torch.nn.Module):
    """(MT-AdamW on ``model``, AdamW(foreach) on a copy), the same groups and hyperparameters."""
    from unip2.training_setup import build_optimizer

    twin = copy.deepcopy(model)
    options = dict(lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    ours = build_optimizer(model, name="mt_adamw", **options)
    groups = build_optimizer(twin, name="adamw", **options).param_groups
    baseline = torch.optim.AdamW([{k: v for k, v in g.items() if k not in ("lr", "betas", "eps")} for g in groups],
                                 foreach=True, **options)
    generator = torch.Generator().manual_seed(0)
    for a, b in zip(model.parameters(), twin.parameters()):
        a.grad = torch.randn(a.shape, generator=generator) * 1e-3
        b.grad = a.grad.clone()
    return ours, baseline


def run(*, steps: int = 10, rounds: int = 15, threads: int = 1) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = tiny_model()
        ours, baseline = _optimizers(model)
        step_ours = lambda: ours.step(omega=1.0, s=0.2)  # noqa: E731  (s < 1: the β/s path a task takes)
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for fn in (step_ours, baseline.step):  # first steps create the state
            fn()
        sides = [("ours", step_ours), ("baseline", baseline.step)]
        for index in range(rounds):
            for name, fn in sides if index % 2 == 0 else sides[::-1]:
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[name].append((time.perf_counter() - start) / steps * 1e3)
    finally:
        torch.set_num_threads(previous)
    ours_ms, base_ms = min(times["ours"]), min(times["baseline"])
    paired = statistics.median(a / b for a, b in zip(times["ours"], times["baseline"]))
    parameters = [p for p in model.parameters() if p.requires_grad]
    return result(KEY, measure=MEASURE, ours=ours_ms, baseline=base_ms, ratio=ours_ms / base_ms, goal=GOAL,
                  unit="ms", details={
                      "median_round_ratio": paired, "tensors": len(parameters), "parameters": sum(p.numel() for p in parameters),
                      "threads": threads, "steps_per_block": steps, "rounds": rounds,
                      "blocks_ms": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
                      "note": f"{len(parameters)} tensors, {sum(p.numel() for p in parameters) / 1e6:.1f}M "
                              f"parameters, {threads} thread; fastest of {rounds} alternating blocks of {steps} steps "
                              f"(median per-round ratio {paired:.2f})"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    row = run(steps=args.steps, rounds=args.rounds, threads=args.threads)
    print({k: v for k, v in row.items() if k != "details"}, row["details"]["blocks_ms"])


if __name__ == "__main__":
    main()
