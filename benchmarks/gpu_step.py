"""One device, one training step per task: steps/s, peak memory and MFU of a unip2 preset (BASE by default).

    python benchmarks/gpu_step.py                                        # BASE, base.yaml's tasks and batches, cuda
    python benchmarks/gpu_step.py --preset large --steps 30 --out large.json
    python benchmarks/gpu_step.py --compile                              # torch.compile backbone and decoder
    python benchmarks/gpu_step.py train.activation_checkpointing=true    # recompute the stacks' blocks in backward
    python benchmarks/gpu_step.py --device cpu --preset tiny --steps 3   # CPU smoke (any machine)

A step is what ``pipelines/training/loop.py`` does per step on one worker, without DDP: collate (host →
device), forward + backward under the run's ``train.precision`` (``--precision``; bf16 autocast where the
hardware has it, CPUs with AVX512-BF16 or AMX included), MT-AdamW step. Inputs are real task batches of
the synthetic shapes world, made by each task's own ``preprocess`` at the run config's per-task batch and
image sizes (``--config``, default ``pipelines/configs/<preset>.yaml``, ``default.yaml`` for tiny). Label
spaces and the vocabulary are padded to the real datasets' sizes (ImageNet 1000, COCO 80, RoBERTa 50265
tokens), because classification and captioning encode every candidate at every step.

FLOPs of one step are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions,
attention; not grid_sample, norms or element-wise ops), so MFU = counted FLOPs × steps/s / peak.
The JSON is rewritten after every task, so a run cut short keeps what it measured; a task that runs out of
memory is recorded as such and the next one runs; ``--budget-s`` leaves the tasks it has no time for unmeasured
(recorded). On CUDA each task's host-device synchronizations per step are counted (CUDA's sync debug mode);
``benchmarks/gpu_check.py`` runs this script eager and compiled into one JSON.

``--peak-tflops`` defaults to 989 (H100/H200 SXM bf16 dense) on CUDA with bf16, 495 with fp32 (TF32 dense), and to a
measured matmul in the step's precision on CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.flop_counter import FlopCounterMode

import unip2
from unip2.config import TextConfig
from unip2.data.prepare import prepare
from unip2.data.row_reader import RowReader
from unip2.data.synthetic import SyntheticConfig, generate
from unip2.model.checkpointing import enable_activation_checkpointing
from unip2.model.tokenizer import TextTokenizer, tokenizer_for
from unip2.precision import PRECISIONS, autocast, resolve_precision
from unip2.run_config import RunConfig, TaskRunConfig, load_run_config
from unip2.tasks import TASKS
from unip2.tasks.base import input_options
from unip2.training_setup import TaskLoss, build_optimizer, compile_model
from unip2.training_step import TrainingStep

ROOT = Path(__file__).resolve().parents[1]
H100_BF16_DENSE_TFLOPS = 989.0
H100_TF32_DENSE_TFLOPS = 495.0
# Sizes of the real label spaces and vocabulary (what a BASE run on COCO + ImageNet encodes per step).
REAL_LABEL_SPACES = {"imagenet": 1000, "coco": 80}
CONFIG_OF_PRESET = {"tiny": "default.yaml", "base": "base.yaml", "large": "large.yaml"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", choices=sorted(CONFIG_OF_PRESET), help="model preset")
    parser.add_argument("--config", help="run config giving per-task batch and image sizes "
                                         "(default: pipelines/configs/<preset>.yaml; default.yaml for tiny)")
    parser.add_argument("--tasks", nargs="+", help="tasks to measure (default: the config's tasks)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per task")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per task before timing")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's own)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: 989 on CUDA, a "
                                                          "measured matmul on CPU)")
    parser.add_argument("--measure-peak", action="store_true", help="use a measured matmul as the peak")
    parser.add_argument("--precision", choices=PRECISIONS, help="bf16 autocast or fp32 (default: the config's "
                                                                 "train.precision; auto = bf16 where native)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone and the decoder")
    parser.add_argument("--real-sizes", choices=["auto", "on", "off"], default="auto",
                        help="pad label spaces and vocabulary to the real datasets' sizes (auto: not for tiny)")
    parser.add_argument("--budget-s", type=float, help="stop measuring new tasks after this many seconds (the "
                                                      "rest are recorded as not measured)")
    parser.add_argument("--out", help="write the results as JSON here (rewritten after every task)")
    parser.add_argument("overrides", nargs="*", help="key=value run-config overrides, e.g. tasks.captioning.batch_size=16")
    return parser.parse_args(argv)


def synthetic_rows(folder: Path) -> tuple[Path, dict[str, list[str]]]:
    """A few shapes-world images per dataset, converted like real data → (Parquet folder, class names)."""
    raw = folder / "raw"
    generate(raw, SyntheticConfig(train_images=24, val_images=4, cls_train_per_class=4, cls_val_per_class=1,
                                  image_size=224))
    manifest = prepare(out=folder / "parquet", coco=raw / "coco", imagenet=raw / "imagenet",
                       karpathy=raw / "coco" / "dataset_coco.json", progress_interval_s=3600)
    return folder / "parquet", manifest["class_names"]


def padded_tokenizer(text: TextConfig) -> TextTokenizer:
    """The text config's tokenizer with unused tokens appended up to ``text.vocab_size`` rows (captioning
    scores them all)."""
    backend = Tokenizer.from_str(tokenizer_for(text).to_json())
    missing = text.vocab_size - backend.get_vocab_size(with_added_tokens=True)
    if missing > 0:
        backend.add_tokens([f"<unused{i}>" for i in range(missing)])
    return TextTokenizer(tokenizer=backend)


def build(run: RunConfig, manifest_names: dict[str, list[str]], *, real_sizes: bool):
    """The run's model with the data's class names, padded to the real sizes when ``real_sizes``."""
    config = run.model
    names = {space: list(v) for space, v in manifest_names.items()}
    if real_sizes:  # extra, never-labelled names after the data's own: the candidate count is what costs
        for space, size in REAL_LABEL_SPACES.items():
            known = names.get(space, [])
            names[space] = known + [f"object kind {i}" for i in range(size - len(known))]
    config.class_names = names
    tokenizer = padded_tokenizer(config.text) if real_sizes else tokenizer_for(config.text)
    torch.manual_seed(0)
    return unip2.build_model(config, tokenizer)


def measured_peak_tflops(device: torch.device, bf16: bool) -> float:
    """Best of a few large matmuls, in TFLOP/s, in the step's precision (bf16 or fp32)."""
    n, repeats = (8192, 10) if device.type == "cuda" else (768, 2)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, repeats * 2 * n**3 / (time.perf_counter() - start) / 1e12)
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def task_batch(task_name: str, run: RunConfig, root: Path, tokenizer: TextTokenizer) -> dict:
    """The numpy batch ``preprocess`` makes for one training step (rows repeat if the folder has fewer)."""
    task = TASKS[task_name]
    reader = RowReader(root, task.dataset, "train")
    rows = np.arange(run.tasks[task_name].batch_size) % reader.num_rows
    return task.preprocess(reader.read(rows), **input_options(run.model.task_input_settings(task_name)),
                           tokenizer=tokenizer, train=True, rng=np.random.default_rng(0))


def make_step(task_name: str, np_batch: dict, *, train_step: TrainingStep, device: torch.device):
    """One training step as the training loop takes it (collate, then ``TrainingStep``) → loss."""
    task = TASKS[task_name]

    def step() -> torch.Tensor:
        return train_step(task_name, task.collate(np_batch, device)).loss

    return step


def count_flops(step) -> float:
    """FLOPs of one step (forward + backward), counted in eager mode."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def time_steps(step, *, device: torch.device, steps: int, warmup: int) -> dict:
    """Mean wall time of ``steps`` steps after ``warmup`` ones, and the peak memory while they ran."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    # CUDA: most memory allocated by tensors; CPU: the process's peak resident set (all tasks so far).
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"steps_per_s": 1.0 / seconds, "step_ms": seconds * 1e3, "loss": float(loss.detach()), "peak_mem_gib": peak / 2**30}


def collate_ms(task_name: str, np_batch: dict, device: torch.device, repeats: int = 5) -> float:
    """Host → device time of one batch (numpy → tensors → ``.to(device)``), part of every step."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        TASKS[task_name].collate(np_batch, device)
    sync(device)
    return (time.perf_counter() - start) * 1e3 / repeats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Path(args.config) if args.config else ROOT / "pipelines" / "configs" / CONFIG_OF_PRESET[args.preset]
    run = load_run_config(config, [f"model.preset={args.preset}", *args.overrides])
    tasks = args.tasks or list(run.tasks)
    unknown = [name for name in tasks if name not in TASKS]
    if unknown:
        print(f"error: unknown task(s) {unknown}; registered: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    for name in tasks:  # a task the config leaves out runs with the default batch at the model's image size
        run.tasks.setdefault(name, TaskRunConfig())
    precision = resolve_precision(args.precision or run.train.precision, device,
                                  field="--precision" if args.precision else "train.precision")
    bf16 = precision == "bf16"
    real_sizes = args.real_sizes == "on" or (args.real_sizes == "auto" and args.preset != "tiny")

    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        root, class_names = synthetic_rows(Path(folder))
        model = build(run, class_names, real_sizes=real_sizes).to(device).train()
        if run.train.activation_checkpointing:  # train.activation_checkpointing=true, as the training loop does
            enable_activation_checkpointing(model)
        batches = {name: task_batch(name, run, root, model.tokenizer) for name in tasks}
    optimizer = build_optimizer(model, name="mt_adamw", lr=run.optim.lr, betas=run.optim.betas, eps=run.optim.eps,
                                weight_decay=run.optim.weight_decay, backbone_lr_scale=run.optim.backbone_lr_scale)
    # ω = s = 1 for every task: the timing is of one task's step, not of the mix.
    train_step = TrainingStep(loss_module=TaskLoss(model), optimizer=optimizer, omegas=dict.fromkeys(tasks, 1.0),
                              ratios=dict.fromkeys(tasks, 1.0), autocast=autocast(precision, device))
    steps = {name: make_step(name, batches[name], train_step=train_step, device=device) for name in tasks}
    results: dict[str, dict] = {}
    flops = {}
    for name in tasks:  # eager, before any compilation
        try:
            flops[name] = count_flops(steps[name])
        except torch.OutOfMemoryError as err:
            results[name] = out_of_memory(name, err, optimizer, device)
    if args.compile:  # in place (state_dict keys unchanged), the two big stacks, as train.compile would
        compile_model(model)
    measured = args.measure_peak or (args.peak_tflops is None and device.type != "cuda")
    given = H100_BF16_DENSE_TFLOPS if bf16 else H100_TF32_DENSE_TFLOPS
    peak = measured_peak_tflops(device, bf16) if measured else (args.peak_tflops or given)
    params = sum(p.numel() for p in model.parameters())
    header = {"preset": args.preset, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "precision": precision, "bf16": bf16, "compile": args.compile,
              "activation_checkpointing": run.train.activation_checkpointing, "parameters_m": params / 1e6,
              "peak_tflops": peak, "peak_measured": measured, "real_sizes": real_sizes,
              "vocab_size": model.tokenizer.vocab_size, "setup_s": time.time() - started, "torch": torch.__version__,
              "steps": args.steps}
    print(f"[gpu_step] {args.preset}: {params / 1e6:.1f}M parameters on {header['device_name']}, {precision}, "
          f"compile={args.compile}, peak {peak:.2f} TFLOP/s ({'measured' if measured else 'given'})", flush=True)
    write_report(args.out, header, results)
    for name in tasks:
        if name in results:
            continue
        if args.budget_s and time.time() - started > args.budget_s:
            results[name] = {"error": f"not measured: the {args.budget_s:g} s budget was spent"}
            print(f"[gpu_step] {name:22s} {results[name]['error']}", flush=True)
            continue
        try:
            figures = time_steps(steps[name], device=device, steps=args.steps, warmup=args.warmup)
            figures["syncs_per_step"] = count_syncs(steps[name], device)
        except torch.OutOfMemoryError as err:
            results[name] = out_of_memory(name, err, optimizer, device)
            write_report(args.out, header, results)
            continue
        figures.update(batch_size=run.tasks[name].batch_size, image_size=run.image_size(name),
                       tflop_per_step=flops[name] / 1e12, collate_ms=collate_ms(name, batches[name], device),
                       mfu=flops[name] * figures["steps_per_s"] / (peak * 1e12))
        results[name] = figures
        syncs = "" if figures["syncs_per_step"] is None else f" syncs {figures['syncs_per_step']}"
        print(f"[gpu_step] {name:22s} batch {figures['batch_size']:3d} @ {figures['image_size']:4d}px "
              f"{figures['steps_per_s']:7.2f} steps/s {figures['step_ms']:8.1f} ms/step "
              f"(collate {figures['collate_ms']:6.1f} ms) {figures['tflop_per_step']:8.3f} TFLOP/step "
              f"MFU {100 * figures['mfu']:5.1f}% peak mem {figures['peak_mem_gib']:6.2f} GiB{syncs}", flush=True)
        write_report(args.out, header, results)  # each task's figures as soon as they exist
    return 0


def write_report(out: str | None, header: dict, results: dict) -> None:
    """The JSON so far (rewritten after every task, so a run cut short keeps what it measured)."""
    if out:
        Path(out).write_text(json.dumps({**header, "tasks": results}, indent=2))


def out_of_memory(name: str, err: Exception, optimizer, device: torch.device) -> dict:
    """Record a task's out-of-memory and free what its step held, so the next task starts clean."""
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(f"[gpu_step] {name:22s} out of memory", flush=True)
    return {"error": f"out of memory: {str(err).splitlines()[0]}"}


def count_syncs(step, device: torch.device) -> int | None:
    """Host-device synchronizations in one step, as CUDA's sync debug mode reports them (None off CUDA)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


if __name__ == "__main__":
    sys.exit(main())
