"""``pretrain_loop_per_worker``: stage 1 on the shared worker loop (``pipelines.training.worker_loop``) — each encoder alone
on its task's batches.

The batches come from the same Ray Data step stream as stage 2 (``pipelines.data.step_stream``), for a run whose
tasks are the stage-1 ones (each task's ``pretrains`` names its encoder; see ``pipelines.stage1.encoders.stage1_run``). Each encoder has its own AdamW and its own one-cycle schedule over its own
steps. At the end rank 0 measures both on the validation split and writes them as users download encoders
(timm's release files, a transformers directory) into the final checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import ray.train.torch
import torch

from pipelines.training.loop_inputs import METRICS, PretrainInputs
from pipelines.data.stream_spec import StreamSpec
from pipelines.training.checkpoints import load_stage1, save_stage1
from pipelines.training.worker_loop import Stage, run_worker_loop
from unip2.data.row_reader import RowReader
from unip2.model.tokenizer import TextTokenizer
from unip2.optim import param_groups_for
from unip2.precision import autocast, resolve_precision
from unip2.pretraining import EncoderPretraining
from unip2.tasks import TASKS
from unip2.training_setup import learning_rate, set_learning_rate


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
    run_worker_loop(inputs.stream, lambda spec, **where: EncoderStage(spec, class_names=inputs.class_names, **where))


class EncoderStage(Stage):
    prefix = "[pretrain]"

    def __init__(self, spec, *, class_names: list[str], **where):
        super().__init__(spec, **where)
        run = spec.run
        self.tokenizer = TextTokenizer.from_json(spec.tokenizer_json)
        encoders = tuple(TASKS[task].pretrains for task in run.tasks)
        self.model = EncoderPretraining(run.model, self.tokenizer, num_classes=len(class_names), encoders=encoders,
                                        label_smoothing=run.pretrain.label_smoothing,
                                        class_names=class_names).to(self.device)
        self.optimizers = _optimizers(self.model, run)
        self.state = {"step": 0, "task_steps": {task: 0 for task in run.tasks}, "history": []}
        self.sums = {task: [0.0, 0, 0, 0] for task in run.tasks}  # this window's loss sum, steps, right, n

    def restore(self, directory: Path) -> None:
        self.state = load_stage1(directory, model=self.model, optimizers=self.optimizers, device=self.device)

    def start(self):
        self.wrapped = ray.train.torch.prepare_model(self.model,
                                                     parallel_strategy_kwargs={"find_unused_parameters": True})
        self.precision = resolve_precision(self.spec.run.train.precision, self.device)
        return self.spec

    def train(self, step: int, task: str, np_batches: list, bad_rows: dict) -> None:
        run = self.spec.run
        np_batch, = np_batches  # stage 1 takes one batch per step (``stage1_run``: no accumulation)
        if np_batch is None:
            raise RuntimeError(f"step {step}: every row of the {task} batch was unreadable")
        batch = TASKS[task].collate(np_batch, self.device)
        planned = _planned_steps(run, task)
        optimizer = self.optimizers[task]
        set_learning_rate(optimizer, learning_rate(
            self.state["task_steps"][task], total_steps=planned, peak=_peak(run, task),
            warmup_steps=int(run.pretrain.warmup_fraction * planned), min_ratio=0.0))
        with autocast(self.precision, self.device):
            loss, right, count = self.wrapped(task, batch)
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        if run.pretrain.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.encoder(TASKS[task].pretrains).parameters(),
                                           run.pretrain.max_grad_norm)
        optimizer.step()
        self.state["task_steps"][task] += 1
        sums = self.sums[task]
        sums[0] += loss.detach()  # tensors until the log line: no wait for the device on every step
        sums[1] += 1
        sums[2] += right
        sums[3] += count

    def window(self, *, task, speed, seconds, elapsed):
        fields = {"seconds": elapsed, "steps_per_s": speed,
                  **{f"lr/{name}": optimizer.param_groups[0]["lr"] for name, optimizer in self.optimizers.items()}}
        for name, (loss_sum, steps, right_sum, n) in self.sums.items():
            if steps:
                fields[f"loss/{name}"] = float(loss_sum) / steps
                fields[f"accuracy/{name}"] = float(right_sum) / max(float(n), 1.0)
        self.sums = {name: [0.0, 0, 0, 0] for name in self.spec.run.tasks}
        shown = " ".join(f"{name} loss={fields[f'loss/{name}']:.3f} acc={fields[f'accuracy/{name}']:.3f}"
                         for name in self.spec.run.tasks if f"loss/{name}" in fields)
        return fields, shown

    def save(self, directory: Path, *, final: bool) -> None:
        save_stage1(directory, model=self.model, optimizers=self.optimizers, state=self.state)
        if final:  # the encoders as users download them, and how good they are
            results = {"history": self.state["history"], "validation": {}}
            if self.model.image is not None:
                self.model.save_image_encoder(directory / "image")
            if self.model.text is not None:
                self.model.save_text_encoder(directory / "text", self.tokenizer)
            for task in self.spec.run.tasks:  # per encoder: its task's validation accuracy
                results["validation"][TASKS[task].pretrains] = {
                    "task": task, **validation_accuracy(self.model, self.spec, task, self.tokenizer)}
            (directory / METRICS).write_text(json.dumps(results, indent=2) + "\n")
            shown = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in results["validation"].items())
            print(f"[pretrain] validation: {shown}", flush=True)


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
