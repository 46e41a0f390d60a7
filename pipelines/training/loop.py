"""``train_loop_per_worker``: stage 2, the generalist, on the shared worker loop (``pipelines.training.worker_loop``), the
same on 2 CPU workers and 64 GPUs.

Every step all workers train one task (unmixed) drawn by the shared plan; DDP averages the gradients;
MT-AdamW normalizes them (g = ω_k ∇L_k / ‖∇L_k‖) and updates the moments with β/s_k. In the ``mixed``
ablation each worker normalizes its own task's gradient before the average (``normalize=False`` step).
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import ray.train.torch

import unip2
from pipelines.training.loop_inputs import LoopHooks, LoopInputs
from pipelines.training.checkpoints import load_checkpoint, save_checkpoint
from pipelines.training.worker_loop import Stage, run_worker_loop
from unip2.distributed import gather_with_grad
from unip2.model.checkpointing import enable_activation_checkpointing
from unip2.model.tokenizer import TextTokenizer
from unip2.precision import autocast, describe, resolve_precision
from unip2.schedules import value_at
from unip2.tasks import TASKS
from unip2.tasks.base import local_gather
from unip2.training_setup import (TaskLoss, compile_model, learning_rate, optimizer_for, running_eagerly,
                                  set_learning_rate)
from unip2.training_step import TrainingStep


def train_loop_per_worker(inputs: LoopInputs) -> None:
    run_worker_loop(inputs.stream, lambda spec, **where: GeneralistStage(spec, hooks=inputs.hooks, **where))


class GeneralistStage(Stage):
    prefix = "[train]"

    def __init__(self, spec, *, hooks: LoopHooks, **where):
        super().__init__(spec, **where)
        run = spec.run
        self.hooks = hooks
        self.model = unip2.build_model(run.model, TextTokenizer.from_json(spec.tokenizer_json)).to(self.device)
        if run.train.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        if run.train.compile:
            compile_model(self.model)
        self.optimizer = optimizer_for(self.model, run.optim)
        self.state = {"step": 0, "bad_steps": 0, "nonfinite_steps": 0, "history": [], "skipped_images": {},
                      "train_seconds": 0.0}
        self.window_losses: dict[str, list[float]] = defaultdict(list)

    def restore(self, directory: Path) -> None:
        self.state = load_checkpoint(directory, model=self.model, optimizer=self.optimizer)

    def start(self):
        run, rank, world_size = self.spec.run, self.rank, self.world_size
        # An elastic run may restart with another worker count: continue every task's data stream where the
        # checkpoint left it (same rows as an unresized run when the count is unchanged), scale the lr.
        self.spec = self.spec.resized(world_size, self.state.get("stream_anchor"))
        self.plan = self.spec.plan() if run.train.sampling == "unmixed" else None
        self.lr_scale = run.learning_rate_scale(world_size)
        if rank == 0 and world_size != run.scale.num_workers:
            peak = value_at(run.optim.lr, self.state["step"]) * self.lr_scale
            print(f"[train] {world_size} of {run.scale.num_workers} workers: peak lr {peak:.3g} (linear "
                  f"rule), global batch {world_size} × {run.train.accumulation_steps} × per-task batch", flush=True)
        # DDP must look for parameters without a gradient: classification, captioning and retrieval leave the
        # proposal network's memory projection and objectness head unused (detection steps use every parameter,
        # and there torch logs once per worker that it found none; the line stays in the worker's log).
        wrapped = ray.train.torch.prepare_model(
            TaskLoss(self.model), parallel_strategy_kwargs={"find_unused_parameters": True})
        # The tasks that gather across workers (their options say) can only where every worker runs the same task.
        gather = gather_with_grad if run.train.sampling == "unmixed" else local_gather
        precision = resolve_precision(run.train.precision, self.device)
        if rank == 0 and self.state["step"] == 0:
            print(f"[train] precision {precision} on {describe(self.device)}", flush=True)
        self.train_step = TrainingStep(loss_module=wrapped, optimizer=self.optimizer, ratios=run.sampling_ratios(),
                                       omegas=run.omegas(),
                                       mixed=run.train.sampling == "mixed" and world_size > 1, gather=gather,
                                       autocast=autocast(precision, self.device))
        self.skipped = Counter(self.state["skipped_images"])
        # A resumed run starts with the balance in force at its step, then follows the schedule's changes.
        step = self.state["step"]
        self.train_step.omegas, self.train_step.ratios = run.omegas(step), run.sampling_ratios(step)
        self.balance_changes = set(run.balance_changes())
        return self.spec

    def train(self, step: int, task: str, np_batches: list, bad_rows: dict) -> None:
        run, state, hooks = self.spec.run, self.state, self.hooks
        hooks.before_step(step, self.rank)
        self.skipped.update(bad_rows)
        # Every rank runs the same number of micro-batches (their collectives pair up): none may be empty.
        if any(np_batch is None for np_batch in np_batches):
            raise RuntimeError(f"step {step}: every row of a {task} batch was unreadable")
        batches = [TASKS[task].collate(np_batch, self.device) for np_batch in np_batches]
        for batch in batches:
            hooks.on_batch(step, self.rank, task, batch)
        peak = value_at(run.optim.lr, step) * self.lr_scale  # the schedule's peak in force at this step
        set_learning_rate(self.optimizer, learning_rate(step, total_steps=run.train.steps, peak=peak,
                                                        warmup_steps=run.optim.warmup_steps,
                                                        min_ratio=run.optim.min_lr_ratio))
        if step in self.balance_changes:  # ω_k and s_k (MT-AdamW's β/s_k) as the schedule has them from here
            self.train_step.omegas, self.train_step.ratios = run.omegas(step), run.sampling_ratios(step)
        outcome = self.train_step(task, batches, loss_hook=lambda loss: hooks.on_loss(step, loss))
        if outcome.finite:
            state["bad_steps"] = 0
            self.window_losses[task].append(float(outcome.loss))
        else:
            state["bad_steps"] += 1
            state["nonfinite_steps"] += 1
            if state["bad_steps"] >= run.train.max_bad_steps:
                raise FloatingPointError(f"{state['bad_steps']} consecutive steps with a non-finite loss or "
                                         f"gradient (last at step {step}, task {task}); stopping")

    def validate(self):
        if self.rank != 0:
            return None
        from pipelines.evaluation.pipeline import evaluate  # the evaluation's own path, in this process

        run = self.spec.run
        # The metric files go to a temporary folder; the model stays in memory, run eagerly (a compiled run's
        # graphs are for training steps).
        with tempfile.TemporaryDirectory() as folder, running_eagerly(self.model):
            metrics = evaluate(None, self.spec.data_root, split="val", tasks=list(run.tasks), model=self.model,
                               out_dir=Path(folder), max_images=run.train.validation_rows, meteor=False,
                               num_cpus=run.scale.threads_per_worker, precision=run.train.precision,
                               figures=False)
        # Each task's own metric (what Tune's objective compares) and its headline ones (the report's columns).
        names = {task: dict.fromkeys([TASKS[task].metric, *(h.metric for h in TASKS[task].headline_metrics())])
                 for task in run.tasks}
        return {f"val/{task}/{name}": float(metrics[task][name]) for task in run.tasks if task in metrics
                for name in names[task] if isinstance(metrics[task].get(name), (int, float))}

    def window(self, *, task, speed, seconds, elapsed):
        fields = {"steps_per_s": speed, "workers": self.world_size, "lr": self.optimizer.param_groups[0]["lr"],
                  "nonfinite_steps": self.state["nonfinite_steps"], "skipped_images": sum(self.skipped.values()),
                  **{f"loss/{name}": sum(v) / len(v) for name, v in self.window_losses.items()}}
        self.state["train_seconds"] += seconds
        self.window_losses.clear()
        losses = " ".join(f"{k[5:]}={v:.3f}" for k, v in fields.items() if k.startswith("loss/"))
        return fields, f"task={task} {losses}"

    def metrics(self) -> dict:
        state = self.state
        state["skipped_images"] = dict(self.skipped)
        return {**super().metrics(), "nonfinite_steps": state["nonfinite_steps"],
                "skipped_images": sum(state["skipped_images"].values())}

    def save(self, directory: Path, *, final: bool) -> None:
        state = self.state  # where a resumed (or resized) run continues every task's stream
        state["stream_anchor"] = self.plan.anchor_at(state["step"]) if self.plan is not None else None
        state["world_size"] = self.world_size
        save_checkpoint(directory, model=self.model, optimizer=self.optimizer, state=self.state,
                        run_config=self.spec.run)
