"""``pretrain_loop_per_worker``: stage 1 on Ray Train — each encoder alone on its task's batches.

The batches come from the same Ray Data step stream as stage 2 (``pipelines.step_stream``), for a run whose
tasks are the stage-1 ones (each task's ``pretrains`` names its encoder; see ``pipelines.pretrain.stage1_run``). Each encoder has its own AdamW and its own one-cycle schedule over its own
steps. At the end rank 0 measures both on the validation split and writes them as users download encoders
(timm's release files, a transformers directory) into the final checkpoint.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch

from pipelines.loop_inputs import METRICS, PretrainInputs
from pipelines.step_stream import stream_steps
from unip2.data.row_reader import RowReader
from unip2.model.tokenizer import TextTokenizer
from unip2.optim import param_groups_for
from unip2.precision import autocast, resolve_precision
from unip2.pretraining import EncoderPretraining
from unip2.tasks import TASKS
from unip2.training_setup import learning_rate, set_learning_rate

STATE = "pretrain_state.pt"


def _optimizers(model: EncoderPretraining, run) -> dict[str, torch.optim.AdamW]:
    pretrain, optimizers = run.pretrain, {}
    for task in run.tasks:
        groups = param_groups_for(model.encoder(TASKS[task].pretrains), pretrain.weight_decay)
        for group in groups:
            group.pop("param_names", None)
        optimizers[task] = torch.optim.AdamW(groups, lr=_peak(run, task), weight_decay=pretrain.weight_decay)
    return optimizers


def _peak(run, task: str) -> float:
    return run.pretrain.image_lr if TASKS[task].pretrains == "image" else run.pretrain.text_lr


def _planned_steps(run, task: str) -> int:
    return run.pretrain.image_steps if TASKS[task].pretrains == "image" else run.pretrain.text_steps


def pretrain_loop_per_worker(inputs: PretrainInputs) -> None:
    spec, run = inputs.stream, inputs.stream.run
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type != "cuda":
        torch.set_num_threads(run.scale.threads_per_worker)
    torch.manual_seed(run.train.seed)
    tokenizer = TextTokenizer.from_json(spec.tokenizer_json)
    encoders = tuple(TASKS[task].pretrains for task in run.tasks)
    model = EncoderPretraining(run.model, tokenizer, num_classes=len(inputs.class_names), encoders=encoders,
                               label_smoothing=run.pretrain.label_smoothing, class_names=inputs.class_names)
    model = model.to(device)
    optimizers = _optimizers(model, run)
    state = {"step": 0, "task_steps": {task: 0 for task in run.tasks}, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / STATE, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        for task, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][task])
        state = saved["state"]
        if rank == 0:
            print(f"[pretrain] resumed at step {state['step']}", flush=True)
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    precision = resolve_precision(run.train.precision, device)

    total, window = run.train.steps, {task: [0.0, 0, 0, 0] for task in run.tasks}  # loss sum, steps, right, n
    started = window_start = time.time()
    stream = stream_steps(spec, rank=rank, start=state["step"], concurrency=run.data.loader_concurrency,
                          num_cpus=run.data.loader_cpus, prefetch=run.data.prefetch_steps,
                          steps_per_block=run.data.steps_per_block)
    for step, task, np_batches, _bad_rows in stream:
        np_batch, = np_batches  # stage 1 takes one batch per step (``stage1_run``: no accumulation)
        if np_batch is None:
            raise RuntimeError(f"step {step}: every row of the {task} batch was unreadable")
        batch = TASKS[task].collate(np_batch, device)
        planned = _planned_steps(run, task)
        set_learning_rate(optimizers[task], learning_rate(
            state["task_steps"][task], total_steps=planned, peak=_peak(run, task),
            warmup_steps=int(run.pretrain.warmup_fraction * planned), min_ratio=0.0))
        with autocast(precision, device):
            loss, right, count = wrapped(task, batch)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if run.pretrain.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.encoder(TASKS[task].pretrains).parameters(),
                                           run.pretrain.max_grad_norm)
        optimizers[task].step()
        state["task_steps"][task] += 1
        state["step"] = step + 1
        sums = window[task]
        sums[0] += loss.detach()  # tensors until the log line: no wait for the device on every step
        sums[1] += 1
        sums[2] += right
        sums[3] += count
        done = state["step"] == total
        if state["step"] % run.train.log_every == 0 or done:
            now = time.time()
            entry = {"step": state["step"], "seconds": now - started}
            for name, (loss_sum, steps, right_sum, n) in window.items():
                if steps:
                    entry[f"loss/{name}"] = float(loss_sum) / steps
                    entry[f"accuracy/{name}"] = float(right_sum) / max(float(n), 1.0)
            state["history"].append(entry)
            if rank == 0:
                speed = sum(sums[1] for sums in window.values()) / max(now - window_start, 1e-9)
                shown = " ".join(f"{name} loss={entry[f'loss/{name}']:.3f} acc={entry[f'accuracy/{name}']:.3f}"
                                 for name in run.tasks if f"loss/{name}" in entry)
                print(f"[pretrain] step {state['step']}/{total} {shown} {speed:.2f} steps/s "
                      f"ETA {(total - state['step']) / max(speed, 1e-9) / 60:.1f} min", flush=True)
            window = {name: [0.0, 0, 0, 0] for name in run.tasks}
            window_start = now
        if state["step"] % run.train.checkpoint_every == 0 or done:
            _report(state, model=model, optimizers=optimizers, rank=rank, spec=spec,
                    tokenizer=tokenizer, final=done)
    if rank == 0:
        print(f"[pretrain] finished {total} steps in {time.time() - started:.0f} s", flush=True)


@torch.no_grad()
def validation_accuracy(model: EncoderPretraining, spec: StreamSpec, task: str, tokenizer: TextTokenizer,
                        batch_size: int = 64) -> dict:
    """The encoder's accuracy on the validation rows of its task's datasets (top-1 of the classifier; the
    masked-token accuracy of the language model, masks drawn with a fixed seed)."""
    reader = RowReader(spec.data_root, spec.run.train_datasets(task), "val")
    rng, right, count = np.random.default_rng(0), 0, 0
    model.eval()
    for first in range(0, reader.num_rows, batch_size):
        raw = reader.read(np.arange(first, min(first + batch_size, reader.num_rows)))
        np_batch = TASKS[task].preprocess(raw, tokenizer=tokenizer, train=False, rng=rng, **spec.inputs(task))
        _, batch_right, batch_count = model(task, TASKS[task].collate(np_batch, model.pixel_mean.device))
        right, count = right + int(batch_right), count + int(batch_count)
    model.train()
    return {"accuracy": right / max(count, 1), "predictions": count}


def _report(state: dict, *, model: EncoderPretraining, optimizers: dict, rank: int, spec: StreamSpec,
            tokenizer: TextTokenizer, final: bool) -> None:
    metrics = {"step": state["step"]}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save({"model": model.state_dict(), "state": state,
                    "optimizers": {task: opt.state_dict() for task, opt in optimizers.items()}},
                   Path(directory) / STATE)
        if final:  # the encoders as users download them, and how good they are
            results = {"history": state["history"], "validation": {}}
            if model.image is not None:
                model.save_image_encoder(Path(directory) / "image")
            if model.text is not None:
                model.save_text_encoder(Path(directory) / "text", tokenizer)
            for task in spec.run.tasks:  # per encoder: its task's validation accuracy
                results["validation"][TASKS[task].pretrains] = {
                    "task": task, **validation_accuracy(model, spec, task, tokenizer)}
            (Path(directory) / METRICS).write_text(json.dumps(results, indent=2) + "\n")
            shown = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in results["validation"].items())
            print(f"[pretrain] validation: {shown}", flush=True)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint_{state['step']:07d}")
