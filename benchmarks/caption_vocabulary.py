"""Cost of captioning's candidate vocabulary: a restricted set (``tasks.captioning.vocabulary: training_captions``)
against every token of a 50,265-token RoBERTa vocabulary, with BASE's decoder and text encoder.

    python benchmarks/caption_vocabulary.py                      # CPU, 1 thread: 256/512/1024 candidates measured
    python benchmarks/caption_vocabulary.py --restricted 5000 --candidates 512 1024 2048 --out vocab.json
    python benchmarks/caption_vocabulary.py --device cuda --candidates 10000 50265   # both measured directly

What is timed is captioning's vocabulary part of one training step at batch 2 × 20 tokens: every candidate
token encoded as its own one-token text by the text encoder and g (``model.encode_vocabulary``, the path
training takes), the 2 × 20 next-word features scored against them (cos / τ), cross-entropy, backward.
The image and caption-prefix path is the same whatever the vocabulary, so it is left out (the features are
a leaf tensor of the decoder's width). Each size runs in a process of its own, so that its peak memory is
its own: time = the best of ``--repeats`` passes; memory = peak resident-set growth over the built model
(CPU) or peak allocated growth (CUDA), and the bytes autograd keeps for backward; FLOPs of one more pass
(``FlopCounterMode``), which unlike the time do not depend on the machine's load. The work is linear in
the number of candidates (each is an independent one-token text), so a size that does not fit in memory
is read off the least-squares line through the measured sizes, and marked as such. The candidates are encoded
in one chunk (``model.candidate_chunk_tokens`` raised to the size): these are the costs of the unchunked encoding,
the activations a chunk of that many candidates holds; a training step chunks them, so its memory stops growing
past one chunk (``benchmarks/step_memory.py``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_table import markdown_table, result  # noqa: E402

FULL = 50265  # roberta-base's vocabulary
RESTRICTED = 10000  # the order of a COCO captioning word vocabulary (~10k words seen >= 5 times)
BATCH, LENGTH = 2, 20
KEYS = ("caption_vocabulary_time_ratio", "caption_vocabulary_memory_ratio")


def measure_one(candidates: int, *, preset: str, device: str, repeats: int, threads: int) -> dict:
    """One size, in this process: {"time_s", "peak_mb", "saved_mb"} of the vocabulary part of one step."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import unip2
    from benchmarks.gpu_step import padded_tokenizer
    from benchmarks.run_inputs import vocabulary_task
    from unip2.tasks import TASKS

    torch.set_num_threads(threads)
    device = torch.device(device)
    config = unip2.preset(preset)
    config.text.vocab_size = FULL
    task = TASKS[vocabulary_task()]
    config.tasks[task.name].vocabulary = "training_captions"
    config.tasks[task.name].token_ids = list(range(candidates))  # holds the end token (id 2)
    config.candidate_chunk_tokens = max(candidates, config.candidate_chunk_tokens)  # one chunk: unchunked cost
    torch.manual_seed(0)
    model = unip2.build_model(config, padded_tokenizer(config.text)).to(device).train()
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(BATCH, LENGTH, config.decoder.width, generator=generator).to(device).requires_grad_()
    targets = torch.randint(0, candidates, (BATCH, LENGTH), generator=generator).to(device)
    saved: dict[int, int] = {}
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def keep(tensor):  # bytes autograd holds for backward: each storage once, the weights themselves not
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def peak_bytes() -> int:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def current_bytes() -> int:
        if device.type == "cuda":
            return torch.cuda.memory_allocated(device)
        statm = Path("/proc/self/statm")  # resident pages now (Linux); elsewhere the peak so far
        return int(statm.read_text().split()[1]) * resource.getpagesize() if statm.is_file() else peak_bytes()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before, times = current_bytes(), []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        features.grad = None
        saved.clear()
        sync()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            vocabulary = task.vocabulary(model)  # K×D: the restricted candidates, encoded
            logits = model.score(features, vocabulary, "vocabulary")  # B×L×K
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        sync()
        times.append(time.perf_counter() - start)
    peak_mb = (peak_bytes() - before) / 2**20
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:  # the work itself: load-independent, unlike the time
        vocabulary = task.vocabulary(model)
        F.cross_entropy(model.score(features, vocabulary, "vocabulary").flatten(0, 1).float(),
                        targets.flatten()).backward()
    return {"candidates": candidates, "time_s": min(times), "times_s": times, "peak_mb": peak_mb,
            "saved_mb": sum(saved.values()) / 2**20, "gflop": counter.get_total_flops() / 1e9}


def line(points: list[dict], key: str) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``key`` over the candidate count."""
    xs, ys = [p["candidates"] for p in points], [p[key] for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else mean_y / mean_x
    return mean_y - slope * mean_x, slope


def figure(points: list[dict], candidates: int, key: str) -> tuple[float, bool]:
    """(``key`` at ``candidates``, measured?): the measured point, else the fitted line's value."""
    for point in points:
        if point["candidates"] == candidates:
            return point[key], True
    intercept, slope = line(points, key)
    return intercept + slope * candidates, False


def run(*, candidates: list[int], restricted: int = RESTRICTED, full: int = FULL, preset: str = "base",
        device: str = "cpu", repeats: int = 2, threads: int = 1) -> list[dict]:
    """Measure every size in ``candidates`` (a subprocess each) → the time and memory rows."""
    points = []
    for count in sorted(set(candidates)):
        done = subprocess.run([sys.executable, __file__, "--one", str(count), "--preset", preset, "--device", device,
                               "--repeats", str(repeats), "--threads", str(threads)],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"{count} candidates failed:\n{done.stderr[-3000:]}")
        points.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[caption_vocabulary] {count} candidates: {points[-1]['time_s']:.2f} s, "
              f"peak +{points[-1]['peak_mb']:.0f} MB, saved for backward {points[-1]['saved_mb']:.0f} MB, "
              f"{points[-1]['gflop']:.0f} GFLOP", flush=True)
    rows = []
    for key, field, unit, what in ((KEYS[0], "time_s", "s", "time"), (KEYS[1], "peak_mb", "MB", "peak memory")):
        ours, ours_measured = figure(points, restricted, field)
        baseline, baseline_measured = figure(points, full, field)
        intercept, slope = line(points, field)
        rows.append(result(key, measure=f"captioning vocabulary encoding + scoring, fwd+bwd {what}: {restricted:,} "
                                        f"candidates / all {full:,} tokens", ours=ours, baseline=baseline,
                           ratio=ours / baseline, goal="reported", unit=unit, details={
                               "measured": points, "restricted": restricted, "full": full,
                               "restricted_measured": ours_measured, "full_measured": baseline_measured,
                               "per_candidate": slope, "fixed": intercept, "device": device, "threads": threads,
                               "gflop_per_candidate": line(points, "gflop")[1],
                               "saved_mb_per_candidate": line(points, "saved_mb")[1],
                               "batch": [BATCH, LENGTH], "preset": preset}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[256, 512, 1024],
                        help="candidate counts measured (each in its own process)")
    parser.add_argument("--restricted", type=int, default=RESTRICTED, help="size of the restricted set compared")
    parser.add_argument("--full", type=int, default=FULL, help="size of the whole vocabulary compared")
    parser.add_argument("--preset", default="base", help="model preset whose text encoder and decoder are used")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="passes per size; the fastest is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure_one(args.one, preset=args.preset, device=args.device, repeats=args.repeats,
                                     threads=args.threads)))
        return
    rows = run(candidates=args.candidates, restricted=args.restricted, full=args.full, preset=args.preset,
               device=args.device, repeats=args.repeats, threads=args.threads)
    print(markdown_table(rows))
    for row in rows:
        details = row["details"]
        print(f"{row['key']}: {details['per_candidate'] * (1e3 if row['unit'] == 's' else 1):.3g} "
              f"{'ms' if row['unit'] == 's' else 'MB'} per candidate; restricted "
              f"{'measured' if details['restricted_measured'] else 'from the line'}, full "
              f"{'measured' if details['full_measured'] else 'from the line'}")
    details = rows[0]["details"]
    print(f"per candidate: {details['gflop_per_candidate']:.3g} GFLOP, {details['saved_mb_per_candidate']:.3g} MB kept "
          "for backward")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
