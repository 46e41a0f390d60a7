"""Image-text retrieval: images and sentences encoded separately by g, symmetric InfoNCE.

Negatives come from every worker through ``gather`` (passed in by the training loop; the identity
by default), which is what unmixed sampling makes possible: every worker holds a retrieval batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unip2.config import TaskOptions
from unip2.config_io import require
import numpy as np

from unip2.eval import retrieval_metrics
from unip2.eval.chance import retrieval_chance
from unip2.tasks.base import Task, local_gather
from unip2.tasks.outputs import MetricContext, TaskOutput
from unip2.tasks.routes import Route, ServeContext, ServeRequest, stack_rows
from unip2.tasks.captioned_images import preprocess_captioned_images
from unip2.tasks.headlines import Headline

IMAGE_FLAGS = dict(input_image=True, target_text=True)
TEXT_FLAGS = dict(input_text=True, target_image=True)


@dataclass
class RetrievalOptions(TaskOptions):
    """Retrieval's options, saved with the model."""

    image_to_text_weight: float = 0.5
    """Loss weight of the image → text InfoNCE term."""
    text_to_image_weight: float = 0.5
    """Loss weight of the text → image InfoNCE term."""
    gather_negatives: bool = True
    """In training on several workers, every worker's images and texts are the negatives (all-gathered with
    gradients) instead of the local batch's only."""

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        for name in ("image_to_text_weight", "text_to_image_weight"):
            require(getattr(self, name) >= 0, prefix + name, "must be >= 0")


@dataclass
class RetrieveTextRequest:
    texts: list[str] = field(default_factory=list, metadata={
        "required": True, "min_length": 1, "max_length": 256, "item_max_length": 1000,
        "description": "candidate texts to rank"})


@dataclass
class RetrieveImageRequest:
    text: str = field(default="", metadata={"required": True, "min_length": 1, "max_length": 1000,
                                            "description": "the query"})
    top_k: int = field(default=10, metadata={"ge": 1, "le": 1000, "description": "images returned, best first"})


class Retrieval(Task):
    name = "retrieval"
    dataset = "coco_captions"
    metric = "R@1"
    headlines = (Headline("i2t_R@1", "i→t R@1", "retrieval R@1 image→text", paper_column="COCO i→t R@1",
                          zero_shot_paper_column="F30k i→t R@1", default_run_goal=">= 0.5",
                          benchmark_key="default_run_i2t_r1"),
                 Headline("t2i_R@1", "t→i R@1", "retrieval R@1 text→image", paper_column="COCO t→i R@1",
                          zero_shot_paper_column="F30k t→i R@1", default_run_goal=">= 0.5",
                          benchmark_key="default_run_t2i_r1"))
    Options = RetrievalOptions
    eval_columns = ("captions",)  # the sentences to rank, embedded at prediction
    candidate_family = "retrieval"
    routes = (Route("/v1/retrieve/text", "Candidate texts ranked for an image", RetrieveTextRequest,
                    answer="answer_rank_texts", shows="ranking",
                    example={"texts": ["a red circle", "two blue squares", "a green triangle and a star"]}),
              Route("/v1/retrieve/image", "Images (uploaded, or the indexed gallery) ranked for a text",
                    RetrieveImageRequest, images="many", answer="answer_rank_images", uses_gallery=True,
                    shows="ranking", example={"text": "a red circle"}))
    zero_shot_splits = (("flickr30k", "test"),)  # the Karpathy Flickr30k 1k test, never trained on

    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        return preprocess_captioned_images(batch, image_size=image_size, tokenizer=tokenizer, train=train, rng=rng,
                                           max_text_length=max_text_length)

    def image_features(self, model, images: torch.Tensor) -> torch.Tensor:
        """B×3×S×S → B×D."""
        encoding = model.encode_image(images)
        tokens, attributes = model.image_sequence(encoding, **IMAGE_FLAGS)
        return model.decode(tokens, attributes)["spe"]

    def text_features(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """B×L token ids → B×D."""
        tokens = model.encode_text(input_ids, attention_mask)
        attributes = model.attributes(tokens, token_text=True, token_is_target=True, **TEXT_FLAGS)
        return model.decode(tokens, attributes, padding_mask=attention_mask == 0)["spe"]

    def loss(self, model, batch, *, gather=local_gather):
        if not self.options(model).gather_negatives:
            gather = local_gather
        images = self.image_features(model, batch["images"])
        texts = self.text_features(model, batch["input_ids"], batch["attention_mask"])
        all_images, offset = gather(images)
        all_texts, _ = gather(texts)
        targets = torch.arange(images.shape[0], device=images.device) + offset
        image_to_text = model.score(images, all_texts, self.candidate_family).float()
        text_to_image = model.score(texts, all_images, self.candidate_family).float()
        return {"loss_image_to_text": F.cross_entropy(image_to_text, targets),
                "loss_text_to_image": F.cross_entropy(text_to_image, targets)}

    def loss_weights(self, model):
        options = self.options(model)
        return {"loss_image_to_text": options.image_to_text_weight, "loss_text_to_image": options.text_to_image_weight}

    @torch.no_grad()
    def predict(self, model, batch, **options: Any) -> list[dict]:
        """Embeddings of each image and of each of its reference captions (for ranking)."""
        images = self.image_features(model, batch["images"])
        references = batch.get("references")
        results = []
        for row, image_id in enumerate(batch["image_id"]):
            result = {"image_id": int(image_id), "image_embedding": images[row].float().cpu().numpy()}
            if references is not None:
                captions = [str(c) for c in references[row]]
                result["captions"] = captions
                result["text_embeddings"] = self.embed_texts(model, captions).float().cpu().numpy()
            results.append(result)
        return results

    def embed_texts(self, model, texts: list[str]) -> torch.Tensor:
        """Sentences → N×D, the same representation the loss trains, tokenized to the length it trained with."""
        ids, mask = model.tokenizer.encode_batch(texts, model.config.task_input_settings(self.name).max_text_length)
        device = model.pixel_mean.device
        return self.text_features(model, torch.as_tensor(ids, device=device), torch.as_tensor(mask, device=device))

    # ------------------------------------------------------------------------------- serving
    @torch.no_grad()
    def answer_rank_texts(self, model, requests: list[ServeRequest], context: ServeContext) -> list:
        """Each request: one image and candidate texts → {"results": [{"index", "text", "score"}], best first}."""
        images = self.collate(stack_rows([r.rows for r in requests]), device=model.pixel_mean.device)["images"]
        image_embeddings = self.image_features(model, images)                                  # B×D
        texts = [text for request in requests for text in request.params["texts"]]
        text_embeddings = self.embed_texts(model, texts)                                       # T×D
        results, start = [], 0
        for row, request in enumerate(requests):
            count = len(request.params["texts"])
            scores = model.score(image_embeddings[row:row + 1], text_embeddings[start:start + count],
                                 self.candidate_family)[0].float().cpu().numpy()
            start += count
            results.append({"results": [{"index": int(i), "text": texts[start - count + i], "score": float(scores[i])}
                                        for i in np.argsort(-scores, kind="stable")]})
        return results

    @torch.no_grad()
    def answer_rank_images(self, model, requests: list[ServeRequest], context: ServeContext) -> list:
        """Each request: a query text and images (or none: the server's gallery) → {"gallery", "results":
        [{"index", "score"(, "image_id")}], best first, at most top_k}."""
        queries = self.embed_texts(model, [request.params["text"] for request in requests])       # B×D
        results = []
        for query, request in zip(queries, requests):
            try:
                if request.rows:
                    candidates, ids = self.gallery_embeddings(model, request.rows), None
                elif context.gallery_embeddings is not None:
                    candidates, ids = context.gallery_embeddings, context.gallery_ids
                else:
                    raise ValueError("images: field required (this server has no indexed gallery)")
                scores = model.score(query[None], torch.as_tensor(candidates, device=query.device),
                                     self.candidate_family)[0].float().cpu().numpy()
                ranked = [{"index": int(i), "score": float(scores[i]), **({"image_id": ids[i]} if ids else {})}
                          for i in np.argsort(-scores, kind="stable")[:request.params["top_k"]]]
                results.append({"gallery": "uploaded" if ids is None else "indexed", "results": ranked})
            except ValueError as err:
                results.append(err)
        return results

    @torch.no_grad()
    def gallery_embeddings(self, model, rows: list[dict]) -> np.ndarray:
        """Preprocessed image rows → N×D embeddings (what a text query is scored against)."""
        images = self.collate(stack_rows(rows), device=model.pixel_mean.device)["images"]
        return self.image_features(model, images).float().cpu().numpy()

    def chance_levels(self, data):
        if not data.has(self.dataset):
            return {}
        return retrieval_chance([len(r["captions"]) for r in data.evaluated(self.dataset, ["image_id", "captions"])])

    def prediction_files(self, answers, files, out):
        """``rankings.json``: each image's candidate texts, best first."""
        path = Path(out) / "rankings.json"
        path.write_text(json.dumps([{"image_id": i, "file_name": file, "results": answer["results"]}
                                    for i, (file, answer) in enumerate(zip(files, answers))], indent=1))
        return {"rankings": path}

    def evaluate(self, output: TaskOutput, context: MetricContext) -> tuple[dict, dict]:
        """Every image of the split against every caption of the split; similarity = cosine (the model's score
        is cosine × a scale, so the ranking is the same). "R@1" = mean of i2t and t2i R@1."""
        kept = [p for p in output.predictions if len(p.get("text_embeddings", ())) > 0]
        images = _unit(np.stack([p["image_embedding"] for p in kept]))                    # I×D
        texts = _unit(np.concatenate([p["text_embeddings"] for p in kept]))               # T×D
        text_to_image = np.repeat(np.arange(len(kept)), [len(p["text_embeddings"]) for p in kept])
        metrics = retrieval_metrics(images @ texts.T, text_to_image)
        metrics["R@1"] = (metrics["i2t_R@1"] + metrics["t2i_R@1"]) / 2
        return metrics | {"num_images": len(kept), "num_texts": int(len(texts)),
                          "images_without_text": len(output.predictions) - len(kept)}, {}


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
