"""Adding a task is a file and a registry line: a throwaway task defined here, registered for this test only, is
trained, evaluated and saved by the project's own code with no edit anywhere else.

In one process: the run config, the training plan and data stream, the training step, the checkpoint (its options
saved with the model), evaluation's planning, batch prediction and metrics. (Ray's workers import the registry
anew, so the Ray-launched runs of these same parts are covered by the registered tasks' tests.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import unip2
from pipelines.batch_predictor import BatchPredictor, decode_predictions, to_row_schema
from pipelines.evaluation import plan_evaluation
from pipelines.step_stream import StepBatchLoader
from pipelines.stream_spec import StreamSpec
from unip2.config import TaskOptions
from unip2.data.manifest import load_manifest, read_table
from unip2.run_config import load_run_config
from unip2.tasks import TASKS
from unip2.tasks.base import Task, local_gather
from unip2.tasks.captioned_images import preprocess_captioned_images
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route
from unip2.training_setup import TaskLoss, build_optimizer
from unip2.training_step import TrainingStep

FLAGS = dict(input_image=True, input_text=True, target_category=True)
ANSWERS = ["yes", "no"]


@dataclass
class MatchOptions(TaskOptions):
    shuffle_weight: float = 1.0
    """Loss weight of the mismatched pairs."""


@dataclass
class MatchRequest:
    text: str = field(default="", metadata={"required": True, "max_length": 200})


class ImageTextMatch(Task):
    """Does the caption describe the image? An image and a sentence in one sequence, scored against "yes"/"no"."""

    name = "image_text_match"
    dataset = "coco_captions"
    eval_columns = ("captions",)
    metric = "accuracy"
    Options = MatchOptions
    routes = (Route("/v1/match", "Whether a text describes the image", MatchRequest),)

    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        return preprocess_captioned_images(batch, image_size=image_size, tokenizer=tokenizer, train=train, rng=rng,
                                           max_text_length=max_text_length)

    def answer_scores(self, model, batch, shift: int) -> torch.Tensor:
        """B×2: each image with its own caption (shift 0) or the next row's (shift 1) → scores of yes / no."""
        image = model.encode_image(batch["images"])
        tokens, attributes = model.image_sequence(image, **FLAGS)
        ids, mask = batch["input_ids"].roll(shift, 0), batch["attention_mask"].roll(shift, 0)
        text = model.encode_text(ids, mask)
        text_attributes = model.attributes(text, token_text=True, **FLAGS)
        padding = torch.cat([torch.zeros(tokens.shape[:2], dtype=torch.bool), mask == 0], dim=1)
        out = model.decode(torch.cat([tokens, text], 1), attributes + text_attributes,
                           padding_mask=padding)["spe"]
        return model.score(out, model.encode_texts(ANSWERS, token_is_target=True, **FLAGS), self.candidate_family)

    def loss(self, model, batch, *, gather=local_gather):
        rows = batch["images"].shape[0]
        return {"loss_match": F.cross_entropy(self.answer_scores(model, batch, 0), torch.zeros(rows, dtype=torch.long)),
                "loss_mismatch": F.cross_entropy(self.answer_scores(model, batch, 1), torch.ones(rows, dtype=torch.long))}

    def loss_weights(self, model):
        return {"loss_match": 1.0, "loss_mismatch": self.options(model).shuffle_weight}

    @torch.no_grad()
    def predict(self, model, batch, **options):
        answers = self.answer_scores(model, batch, 0).argmax(-1)
        return [{"image_id": int(i), "answer": ANSWERS[int(a)]} for i, a in zip(batch["image_id"], answers)]

    def evaluate(self, output: TaskOutput, context: MetricContext):
        right = [p["answer"] == "yes" for p in output.predictions]
        return {"accuracy": sum(right) / len(right), "num_images": len(right)}, {}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(TASKS, "image_text_match", ImageTextMatch())
    return TASKS["image_text_match"]


def test_a_task_defined_in_one_file_trains_evaluates_and_is_saved(registered, embedded_data, tmp_path):
    run = load_run_config(overrides=[
        "tasks={image_text_match: {batch_size: 3, omega: 2.0}, classification: {batch_size: 2}}",
        "model.tasks.image_text_match.shuffle_weight=0.5", "model.image_size=64", "model.proposals.num_queries=12",
        f"data.root={embedded_data}", "train.steps=6", "scale.num_workers=1"])
    run.model.class_names = {k: list(v) for k, v in load_manifest(embedded_data)["class_names"].items()}
    assert run.model.tasks["image_text_match"] == MatchOptions(shuffle_weight=0.5)

    # Training: the run's plan draws the task, the data stream prepares its rows, the training step trains it.
    spec = StreamSpec.of(run, embedded_data)
    loader = StepBatchLoader(spec, rank=0)
    steps = [s for s in range(run.train.steps) if spec.plan().rows_at(s, 0)[0] == "image_text_match"]
    assert steps
    torch.manual_seed(0)
    model = unip2.build_model(run.model, loader.tokenizer)
    optimizer = build_optimizer(model, name="mt_adamw", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    step = TrainingStep(loss_module=TaskLoss(model), optimizer=optimizer, ratios=run.sampling_ratios(),
                        omegas={name: task.omega for name, task in run.tasks.items()})
    before = model.decoder.spe_token.detach().clone()
    item = loader.load(steps[0])
    outcome = step("image_text_match", registered.collate(item["batches"][0]))
    assert outcome.finite and set(outcome.terms) == {"loss_match", "loss_mismatch"}
    assert not torch.equal(model.decoder.spe_token, before)

    # Saved with the model: its options come back with the checkpoint.
    checkpoint = unip2.save(model, tmp_path / "model")
    assert unip2.load(checkpoint).config.tasks["image_text_match"] == MatchOptions(shuffle_weight=0.5)

    # Evaluation: planned from the registry, predicted by the batch predictor, scored by the task's own metric.
    plan = plan_evaluation(checkpoint, embedded_data, tasks=["image_text_match"])
    assert plan.tasks == ["image_text_match"]
    rows = to_row_schema(read_table(embedded_data, "coco_captions", "val", columns=["image", "image_id", "captions"])
                         .slice(0, 4), "coco_captions")
    predictor = BatchPredictor(str(checkpoint), {"coco_captions": ["image_text_match"]},
                               {"coco_captions": ["captions"]}, {})
    predictions = decode_predictions(predictor(rows), "image_text_match")
    assert [p["image_id"] for p in predictions] == rows.column("image_id").to_pylist()
    metrics, _ = registered.evaluate(TaskOutput(predictions), MetricContext(tmp_path, {}))
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_images"] == 4
