"""``train_loop_per_worker``: setup → resume → loop → report, the same on 2 CPU workers and 64 GPUs.

Every step all workers train one task (unmixed) drawn by the shared plan; DDP averages the gradients;
MT-AdamW normalizes them (g = ω_k ∇L_k / ‖∇L_k‖) and updates the moments with β/s_k. In the ``mixed``
ablation each worker normalizes its own task's gradient before the average (``normalize=False`` step).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter, defaultdict

import ray.train
import ray.train.torch
import torch

import unip2
from pipelines.loop_inputs import LoopInputs
from pipelines.step_stream import stream_steps
from pipelines.train_checkpoint import load_checkpoint, save_checkpoint
from unip2.distributed import gather_with_grad
from unip2.model.checkpointing import enable_activation_checkpointing
from unip2.model.tokenizer import TextTokenizer
from unip2.precision import autocast, describe, resolve_precision
from unip2.run_config import RunConfig
from unip2.tasks import TASKS
from unip2.tasks.base import local_gather
from unip2.training_setup import TaskLoss, compile_model, learning_rate, optimizer_for, set_learning_rate
from unip2.training_step import TrainingStep


def train_loop_per_worker(inputs: LoopInputs) -> None:
    # ------------------------------------------------------------------------------------- setup
    spec, hooks = inputs.stream, inputs.hooks
    run = spec.run
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    if not on_gpu:
        torch.set_num_threads(run.scale.threads_per_worker)
    torch.manual_seed(run.train.seed)  # the same initial weights on every rank
    model = unip2.build_model(run.model, TextTokenizer.from_json(spec.tokenizer_json)).to(device)
    if run.train.activation_checkpointing:
        enable_activation_checkpointing(model)
    if run.train.compile:
        compile_model(model)
    optimizer = optimizer_for(model, run.optim)
    state = {"step": 0, "bad_steps": 0, "nonfinite_steps": 0, "history": [], "skipped_images": {},
             "train_seconds": 0.0}

    # ------------------------------------------------------------------------------------ resume
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, model=model, optimizer=optimizer)
        if rank == 0:
            print(f"[train] resumed at step {state['step']} from {checkpoint.path}", flush=True)
    # An elastic run may restart with another worker count: continue every task's data stream where the
    # checkpoint left it (same rows as an unresized run when the count is unchanged), scale the lr.
    spec = spec.resized(world_size, state.get("stream_anchor"))
    plan = spec.plan() if run.train.sampling == "unmixed" else None
    peak_lr = run.optim.lr * run.learning_rate_scale(world_size)
    if rank == 0 and world_size != run.scale.num_workers:
        print(f"[train] {world_size} of {run.scale.num_workers} workers: peak lr {peak_lr:.3g} (linear rule), "
              f"global batch {world_size} × {run.train.accumulation_steps} × per-task batch", flush=True)
    # DDP must look for parameters without a gradient: classification, captioning and retrieval leave the
    # proposal network's memory projection and objectness head unused (detection steps use every parameter,
    # and there torch logs once per worker that it found none; the line stays in the worker's log).
    wrapped = ray.train.torch.prepare_model(
        TaskLoss(model), parallel_strategy_kwargs={"find_unused_parameters": True})
    # The tasks that gather across workers (their options say) can only where every worker runs the same task.
    gather = gather_with_grad if run.train.sampling == "unmixed" else local_gather
    precision = resolve_precision(run.train.precision, device)
    if rank == 0 and state["step"] == 0:
        print(f"[train] precision {precision} on {describe(device)}", flush=True)
    train_step = TrainingStep(loss_module=wrapped, optimizer=optimizer, ratios=run.sampling_ratios(),
                              omegas={name: task.omega for name, task in run.tasks.items()},
                              mixed=run.train.sampling == "mixed" and world_size > 1, gather=gather,
                              autocast=autocast(precision, device))

    # -------------------------------------------------------------------------------------- loop
    total = run.train.steps
    window_losses: dict[str, list[float]] = defaultdict(list)
    skipped = Counter(state["skipped_images"])
    started, window_start, window_steps = time.time(), time.time(), 0
    stream = stream_steps(spec, rank=rank, start=state["step"], concurrency=run.data.loader_concurrency,
                          num_cpus=run.data.loader_cpus, prefetch=run.data.prefetch_steps,
                          steps_per_block=run.data.steps_per_block)
    for step, task_name, np_batches, bad_rows in stream:
        hooks.before_step(step, rank)
        skipped.update(bad_rows)
        # Every rank runs the same number of micro-batches (their collectives pair up): none may be empty.
        if any(np_batch is None for np_batch in np_batches):
            raise RuntimeError(f"step {step}: every row of a {task_name} batch was unreadable")
        batches = [TASKS[task_name].collate(np_batch, device) for np_batch in np_batches]
        for batch in batches:
            hooks.on_batch(step, rank, task_name, batch)
        set_learning_rate(optimizer, learning_rate(step, total_steps=total, peak=peak_lr,
                                                   warmup_steps=run.optim.warmup_steps,
                                                   min_ratio=run.optim.min_lr_ratio))
        outcome = train_step(task_name, batches, loss_hook=lambda loss: hooks.on_loss(step, loss))
        if outcome.finite:
            state["bad_steps"] = 0
            window_losses[task_name].append(float(outcome.loss))
        else:
            state["bad_steps"] += 1
            state["nonfinite_steps"] += 1
            if state["bad_steps"] >= run.train.max_bad_steps:
                raise FloatingPointError(f"{state['bad_steps']} consecutive steps with a non-finite loss or "
                                         f"gradient (last at step {step}, task {task_name}); stopping")
        state["step"] = step + 1
        window_steps += 1
        done = state["step"] == total

        # ---------------------------------------------------------------------------- report
        if state["step"] % run.train.log_every == 0 or done:
            now = time.time()
            speed = window_steps / max(now - window_start, 1e-9)
            entry = {"step": state["step"], "steps_per_s": speed, "workers": world_size,
                     **{f"loss/{name}": sum(v) / len(v) for name, v in window_losses.items()}}
            state["history"].append(entry)
            state["train_seconds"] += now - window_start
            if rank == 0:
                eta = (total - state["step"]) / max(speed, 1e-9)
                losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in entry.items() if k.startswith("loss/"))
                print(f"[train] step {state['step']}/{total} task={task_name} {losses} "
                      f"{speed:.2f} steps/s ETA {eta / 60:.1f} min", flush=True)
            window_losses.clear()
            window_start, window_steps = now, 0
        if state["step"] % run.train.checkpoint_every == 0 or done:
            state["skipped_images"] = dict(skipped)
            state["stream_anchor"] = plan.anchor_at(state["step"]) if plan is not None else None
            state["world_size"] = world_size
            _report(state, model=model, optimizer=optimizer, run=run, rank=rank)
    if rank == 0:
        print(f"[train] finished {total} steps in {time.time() - started:.0f} s", flush=True)


def _report(state: dict, *, model, optimizer, run: RunConfig, rank: int) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (weights are identical on all ranks)."""
    metrics = {"step": state["step"], "nonfinite_steps": state["nonfinite_steps"],
               "skipped_images": sum(state["skipped_images"].values())}
    if state["history"]:
        metrics.update({k: v for k, v in state["history"][-1].items() if k != "step"})
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, model=model, optimizer=optimizer, state=state, run_config=run)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint_{state['step']:07d}")
