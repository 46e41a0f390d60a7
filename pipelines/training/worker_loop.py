"""The one worker loop both stages run on Ray Train: threads and seed, resume from the last checkpoint, the step
stream, the windowed progress line and its metrics reported through Ray Train (every ``train.log_every`` steps;
``pipelines.training.live_metrics``), checkpoints on their schedule (every rank reports; rank 0 attaches the files). A stage supplies what differs, its model and its step (``Stage``): stage 1 in ``pipelines.stage1.loop``,
the generalist in ``pipelines.training.loop``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import ray.train
import ray.train.torch
import torch

from pipelines.data.step_stream import stream_steps
from pipelines.data.stream_spec import StreamSpec


class Stage:
    """One stage's part of the loop. ``state`` is saved in every checkpoint: ``step`` (the next one) and
    ``history`` (one entry per progress window) at least, plus the stage's own counters."""

    prefix = "[train]"
    """Console prefix of the stage's lines."""

    def __init__(self, spec: StreamSpec, *, device: torch.device, rank: int, world_size: int):
        self.spec, self.device, self.rank, self.world_size = spec, device, rank, world_size
        self.state: dict = {"step": 0, "history": []}

    def restore(self, directory: Path) -> None:
        """Load the weights, the optimizer and ``state`` from a checkpoint folder."""
        raise NotImplementedError

    def start(self) -> StreamSpec:
        """After any resume, before the first step: the stream spec the steps are read from."""
        return self.spec

    def train(self, step: int, task: str, np_batches: list, bad_rows: dict) -> None:
        """One step of ``task`` on this worker's batches (the micro-batches of the step)."""
        raise NotImplementedError

    def window(self, *, task: str, speed: float, seconds: float, elapsed: float) -> tuple[dict, str]:
        """The progress window just ended (``seconds`` long, ``speed`` steps/s, ``elapsed`` since the loop
        started; ``task`` the last step's) → (its history entry's fields, the progress line's middle part)."""
        raise NotImplementedError

    def validate(self) -> dict[str, float] | None:
        """Every ``train.validate_every`` steps, on every rank: the model's validation metrics (rank 0's; the
        others return None and wait for it at their next collective). None by default: no validation."""
        return None

    def metrics(self) -> dict:
        """What every rank reports to Ray Train after each progress window: the step, the last window's history
        entry and the last validation's metrics."""
        last = [entries[-1] for entries in (self.state["history"], self.state.get("validation", [])) if entries]
        return {"step": self.state["step"], **{k: v for entry in last for k, v in entry.items() if k != "step"}}

    def save(self, directory: Path, *, final: bool) -> None:
        """Rank 0: the checkpoint's files (``final``: the run's last one)."""
        raise NotImplementedError


def run_worker_loop(spec: StreamSpec, make_stage: Callable[..., Stage]) -> None:
    """The worker's whole run: ``make_stage(spec, device=..., rank=..., world_size=...)`` builds the stage once the
    seed is set (every rank builds the same initial weights)."""
    run = spec.run
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type != "cuda":
        torch.set_num_threads(run.scale.threads_per_worker)
    torch.manual_seed(run.train.seed)
    stage = make_stage(spec, device=device, rank=rank, world_size=world_size)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            stage.restore(Path(directory))
        if rank == 0:
            print(f"{stage.prefix} resumed at step {stage.state['step']} from {checkpoint.path}", flush=True)
    elif run.train.resume_from:  # another run's checkpoint (a population member copying a better one)
        stage.restore(Path(run.train.resume_from))
        if rank == 0:
            print(f"{stage.prefix} started at step {stage.state['step']} from {run.train.resume_from}", flush=True)
    spec = stage.start()

    total, state = run.train.steps, stage.state
    end = run.train.stop_at or total
    started = window_start = time.time()
    window_steps = 0
    stream = stream_steps(spec, rank=rank, start=state["step"], concurrency=run.data.loader_concurrency,
                          num_cpus=run.data.loader_cpus, prefetch=run.data.prefetch_steps,
                          steps_per_block=run.data.steps_per_block) if state["step"] < end else ()
    for step, task, np_batches, bad_rows in stream:
        stage.train(step, task, np_batches, bad_rows)
        state["step"] = step + 1
        window_steps += 1
        if run.train.validate_every and state["step"] % run.train.validate_every == 0:
            window_start += validate(stage)  # steps/s counts training only
        done = state["step"] == total
        logged = state["step"] % run.train.log_every == 0 or state["step"] == end
        if logged:
            now = time.time()
            speed = window_steps / max(now - window_start, 1e-9)
            fields, shown = stage.window(task=task, speed=speed, seconds=now - window_start, elapsed=now - started)
            state["history"].append({"step": state["step"], **fields})
            if rank == 0:
                eta = (total - state["step"]) / max(speed, 1e-9)
                print(f"{stage.prefix} step {state['step']}/{total} {shown} {speed:.2f} steps/s "
                      f"ETA {eta / 60:.1f} min", flush=True)
            window_start, window_steps = now, 0
        if state["step"] % run.train.checkpoint_every == 0 or state["step"] == end:
            report(stage, final=done)
        elif logged:
            ray.train.report(stage.metrics(), checkpoint=None)  # live metrics: every rank, the same steps
        if state["step"] == end:
            break
    if rank == 0:
        print(f"{stage.prefix} finished {total} steps in {time.time() - started:.0f} s" if end == total else
              f"{stage.prefix} stopped at step {end} of {total} (train.stop_at)", flush=True)


def validate(stage: Stage) -> float:
    """One validation (``Stage.validate``), kept in the state's ``validation`` list and said on rank 0's console
    → the seconds it took."""
    started = time.time()
    values = stage.validate()
    seconds = time.time() - started
    if values is not None:
        stage.state.setdefault("validation", []).append({"step": stage.state["step"], "seconds": seconds, **values})
        stage.state["validation_seconds"] = stage.state.get("validation_seconds", 0.0) + seconds
        shown = " ".join(f"{key[4:]}={value:.3f}" for key, value in values.items())
        print(f"{stage.prefix} validation at step {stage.state['step']}: {shown} ({seconds:.1f} s)", flush=True)
    return seconds


def report(stage: Stage, *, final: bool) -> None:
    """Every rank reports its metrics; rank 0 attaches the checkpoint (the weights are the same on every rank)."""
    metrics = stage.metrics()
    if stage.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as directory:
        stage.save(Path(directory), final=final)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint_{stage.state['step']:07d}")
