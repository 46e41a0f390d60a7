"""What computing the proposals' masks only where a loss reads them saves: each task's training step (forward +
backward) with the last layer's masks alone (ours) over the same step with every layer's masks (as before).

    python benchmarks/layer_masks.py [--rounds 5 --steps 3 --threads 1]

The default run's tiny model and batches in its ``train.precision``. Ours is each task as it trains: instance
segmentation asks for every layer's masks (its mask losses supervise them), every other task for none but the
last. The baseline runs the same step with ``encode_image(layer_masks=True)`` for every task. Rounds alternate
the sides; each side's figure is its best block. Reported per task: ms/step both ways and baseline / ours.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

def run(data_root: str | Path, *, rounds: int = 5, steps: int = 3, threads: int = 1) -> dict:
    import unip2
    from benchmarks.run_inputs import default_run, task_batches
    from unip2.precision import autocast, resolve_precision
    from unip2.tasks import TASKS
    from unip2.training_setup import TaskLoss

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_config = default_run(data_root)
        cpu = torch.device("cpu")
        precision = resolve_precision(run_config.train.precision, cpu)
        torch.manual_seed(0)
        model = unip2.build_model(run_config.model).train()
        batches = {name: TASKS[name].collate(batch, cpu)
                   for name, batch in task_batches(run_config, data_root, model.tokenizer).items()
                   if "images" in batch and not TASKS[name].with_masks}  # image tasks without mask losses
        loss_module = TaskLoss(model)
        plain = model.encode_image

        def every_layer(*args, **kwargs):  # what every task computed before: every layer's masks
            return plain(*args, **{**kwargs, "layer_masks": True})

        def block(name: str, encode) -> float:
            model.encode_image = encode  # the baseline's override, on this instance only
            try:
                start = time.perf_counter()
                for _ in range(steps):
                    model.zero_grad(set_to_none=True)
                    with autocast(precision, cpu):
                        loss, _ = loss_module(name, batches[name])
                    loss.backward()
                return (time.perf_counter() - start) / steps
            finally:
                model.encode_image = plain

        times = {name: {"ours": [], "baseline": []} for name in batches}
        for name in batches:  # warm-up
            block(name, plain), block(name, every_layer)
        for _ in range(rounds):
            for name in batches:
                times[name]["ours"].append(block(name, plain))
                times[name]["baseline"].append(block(name, every_layer))
    finally:
        torch.set_num_threads(previous)
    per_task = {name: {"ours_ms": min(t["ours"]) * 1e3, "baseline_ms": min(t["baseline"]) * 1e3,
                       "ratio": min(t["baseline"]) / min(t["ours"])} for name, t in times.items()}
    return {"precision": precision, "threads": threads, "rounds": rounds, "steps": steps, "per_task": per_task}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.run_inputs import embedded_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="converted data folder (default: the embedded default data)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args.data or embedded_data(), rounds=args.rounds, steps=args.steps, threads=args.threads)
    print(f"{report['precision']}, {report['threads']} thread, best of {report['rounds']} blocks of "
          f"{report['steps']} steps")
    for name, figures in report["per_task"].items():
        print(f"{name:16s} masks of the last layer {figures['ours_ms']:7.1f} ms   of every layer "
              f"{figures['baseline_ms']:7.1f} ms   saved {100 * (1 - 1 / figures['ratio']):5.1f} %")


if __name__ == "__main__":
    main()
