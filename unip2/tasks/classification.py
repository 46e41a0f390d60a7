"""Image classification: the image's <SPE> representation scored against encoded class names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unip2.config import TaskOptions
from unip2.config_io import require
from unip2.eval import classification_metrics
from unip2.eval.chance import classification_chance
from unip2.tasks.base import Task, image_batch, image_ids, local_gather
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route
from unip2.tasks.preprocessing import center_resize, decode_image, random_resized_crop
from unip2.tasks.headlines import Headline

TASK_FLAGS = dict(input_image=True, target_category=True)


@dataclass
class ClassificationOptions(TaskOptions):
    """Classification's options, saved with the model."""

    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy over the class names."""

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(0 <= self.label_smoothing < 1, prefix + "label_smoothing", "must be in [0, 1)")


@dataclass
class ClassifyRequest:
    class_names: list[str] | None = field(default=None, metadata={
        "min_length": 1, "max_length": 1000, "item_max_length": 200,
        "description": "open vocabulary; default: the checkpoint's names"})
    top_k: int = field(default=5, metadata={"ge": 1, "le": 1000, "description": "labels returned, best first"})


class Classification(Task):
    name = "classification"
    dataset = "imagenet"
    label_space = "imagenet"
    metric = "top1"
    legacy_options = {"classification_label_smoothing": "label_smoothing"}
    pretrains = "image"  # stage 1: the backbone as a plain classifier of these labels
    headlines = (Headline("top1", "cls top-1", "classification top-1", paper_column="IN-1k top-1",
                          default_run_goal=">= 0.9", benchmark_key="default_run_top1"),)
    Options = ClassificationOptions
    eval_columns = ("label",)
    routes = (Route("/v1/classify", "Top-k labels of an image", ClassifyRequest, shows="labels"),)

    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        images = []
        for data in batch["image"]:
            image = decode_image(data)
            if train:
                array = random_resized_crop(image, image_size, rng)
                if rng.random() < 0.5:  # class names are flip-invariant
                    array = array[:, ::-1]
            else:
                array = center_resize(image, image_size)
            images.append(array)
        out = {"images": image_batch(images), "image_id": image_ids(batch)}
        if "label" in batch:
            out["labels"] = np.asarray(batch["label"], dtype=np.int64)
        return out

    def features(self, model, images: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (B×D image representations, K×D class-name candidates)."""
        encoding = model.encode_image(images)
        tokens, attributes = model.image_sequence(encoding, **TASK_FLAGS)
        image_features = model.decode(tokens, attributes)["spe"]
        candidates = model.encode_texts(names, token_is_target=True, **TASK_FLAGS)
        return image_features, candidates

    def loss(self, model, batch, *, gather=local_gather):
        image_features, candidates = self.features(model, batch["images"], self.class_names(model))
        logits = model.score(image_features, candidates, self.candidate_family)  # B×K
        smoothing = self.options(model).label_smoothing
        return {"loss_class": F.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing)}

    def chance_levels(self, data):
        if not data.has(self.dataset, "train", data.split):
            return {}
        return {"top1": classification_chance([r["label"] for r in data.training(self.dataset, ["label"])],
                                              [r["label"] for r in data.evaluated(self.dataset, ["label"])])}

    def pretrain_loss(self, encoders, batch):
        logits = encoders.classify(batch["images"])
        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=encoders.label_smoothing)
        right = (logits.detach().argmax(-1) == batch["labels"]).sum()
        return loss, right, right.new_tensor(batch["labels"].numel())

    def loss_weights(self, model):
        return {"loss_class": 1.0}

    @torch.no_grad()
    def predict(self, model, batch, *, class_names: list[str] | None = None, top_k: int = 5,
                **options: Any) -> list[dict]:
        names = self.class_names(model, class_names)
        image_features, candidates = self.features(model, batch["images"], names)
        probs = model.score(image_features, candidates, self.candidate_family).float().softmax(-1)
        scores, labels = probs.topk(min(top_k, len(names)), dim=-1)
        return [{"image_id": int(image_id), "label": int(row_labels[0]), "score": float(row_scores[0]),
                 "top_labels": [int(i) for i in row_labels], "top_names": [names[int(i)] for i in row_labels],
                 "top_scores": [float(s) for s in row_scores]}
                for image_id, row_labels, row_scores in zip(batch["image_id"], labels, scores)]

    def prediction_files(self, answers, files, out):
        rows = [{"image_id": i, "file_name": file, "top_names": a["top_names"], "top_scores": a["top_scores"]}
                for i, (file, a) in enumerate(zip(files, answers))]
        path = Path(out) / "top_k.json"
        path.write_text(json.dumps(rows, indent=1))
        return {"top_k": path}

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        """Top-1 / top-5 against the rows' labels; predicted names are matched to the data's classes by name,
        so a candidate that is not a class of the data is never right (open vocabulary)."""
        index = {name: i for i, name in enumerate(context.data_class_names[self.label_space])}
        top_labels = np.asarray([[index.get(name, -1) for name in p["top_names"]] for p in output.predictions])
        metrics = classification_metrics(np.asarray(output.annotations["label"], dtype=np.int64), top_labels)
        return metrics | {"num_images": len(output.predictions)}, {}
