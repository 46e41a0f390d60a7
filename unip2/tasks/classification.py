"""Image classification: the image's <SPE> representation scored against encoded class names."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unip2.tasks.base import Task, image_batch, image_ids, local_gather
from unip2.tasks.preprocessing import center_resize, decode_image, random_resized_crop

TASK_FLAGS = dict(input_image=True, target_category=True)


class Classification(Task):
    name = "classification"
    dataset = "imagenet"
    label_space = "imagenet"
    metric = "top1"

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
        logits = model.score(image_features, candidates, "category")  # B×K
        smoothing = model.config.tasks.classification_label_smoothing
        return {"loss_class": F.cross_entropy(logits.float(), batch["labels"], label_smoothing=smoothing)}

    def loss_weights(self, model):
        return {"loss_class": 1.0}

    @torch.no_grad()
    def predict(self, model, batch, *, class_names: list[str] | None = None, top_k: int = 5,
                **options: Any) -> list[dict]:
        names = self.class_names(model, class_names)
        image_features, candidates = self.features(model, batch["images"], names)
        probs = model.score(image_features, candidates, "category").float().softmax(-1)
        scores, labels = probs.topk(min(top_k, len(names)), dim=-1)
        return [{"image_id": int(image_id), "label": int(row_labels[0]), "score": float(row_scores[0]),
                 "top_labels": [int(i) for i in row_labels], "top_names": [names[int(i)] for i in row_labels],
                 "top_scores": [float(s) for s in row_scores]}
                for image_id, row_labels, row_scores in zip(batch["image_id"], labels, scores)]
