"""base.yaml and large.yaml train as shipped: one step of every task at the config's own per-task image sizes.

The training pipeline's own parts (the step plan, the data loader that decodes and augments at each task's
size, the task losses, MT-AdamW), on CPU, with a small Swin standing in for Swin-B/L and narrow heads so the
step fits a test; everything else is the shipped file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import unip2
from pipelines.data.step_stream import StepBatchLoader
from pipelines.data.stream_spec import StreamSpec
from unip2.data.manifest import load_manifest
from unip2.run_config import load_run_config
from unip2.tasks import TASKS
from unip2.training_setup import TaskLoss, optimizer_for

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
SMALL_STAND_INS = [
    "model.backbone.name=swin_tiny_patch4_window7_224", "model.backbone.drop_path_rate=0.0",
    "model.proposals.dim=32", "model.proposals.num_heads=2", "model.proposals.encoder_layers=1",
    "model.proposals.decoder_layers=1", "model.proposals.ffn_dim=64", "model.proposals.num_queries=10",
    "model.proposals.mask_loss_points=256", "model.tokens.num_regional=4",
    "model.text.vocab_size=512", "model.text.hidden_size=32", "model.text.num_layers=1", "model.text.num_heads=2",
    "model.text.intermediate_size=64", "model.decoder.width=32", "model.decoder.num_layers=1",
    "model.decoder.num_heads=2", "model.decoder.ffn_dim=64", "model.decoder.num_experts=2",
]


@pytest.mark.parametrize("name", ["base.yaml", "large.yaml"])
def test_paper_config_trains_a_step_of_every_task_at_its_image_size(name, embedded_data):
    batches = [f"tasks.{task}.batch_size=1" for task in load_run_config(CONFIGS / name).tasks]
    run = load_run_config(CONFIGS / name, SMALL_STAND_INS + batches + [f"data.root={embedded_data}"])
    run.model.class_names = {k: list(v) for k, v in load_manifest(embedded_data)["class_names"].items()}
    sizes = {task: run.image_size(task) for task in run.tasks}
    assert sizes == {"classification": 224, "instance_segmentation": 1024, "captioning": 384, "retrieval": 384}

    spec = StreamSpec.of(run, Path(embedded_data))
    plan, loader = spec.plan(), StepBatchLoader(spec, rank=0)
    first_step = {}
    for step in range(run.train.steps):
        first_step.setdefault(plan.rows_at(step, 0)[0], step)
        if len(first_step) == len(run.tasks):
            break
    torch.manual_seed(0)
    model = unip2.build_model(run.model, loader.tokenizer)
    optimizer = optimizer_for(model, run.optim)
    loss_module, ratios = TaskLoss(model), run.sampling_ratios()
    for task, step in first_step.items():
        item = loader.load(step)
        assert item["task"] == task and item["batches"][0]["images"].shape[-1] == sizes[task]
        optimizer.zero_grad(set_to_none=True)
        loss, terms = loss_module(task, TASKS[task].collate(item["batches"][0]))
        assert torch.isfinite(loss), (task, terms)
        loss.backward()
        optimizer.step(omega=run.tasks[task].omega, s=ratios[task])
    assert all(torch.isfinite(p).all() for p in model.parameters())
