"""Image-text retrieval: images and sentences encoded separately by g, symmetric InfoNCE.

Negatives come from every worker through ``gather`` (passed in by the training loop; the identity
by default), which is what unmixed sampling makes possible: every worker holds a retrieval batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unip2.tasks.base import Task, local_gather
from unip2.tasks.captioned_images import preprocess_captioned_images

IMAGE_FLAGS = dict(input_image=True, target_text=True)
TEXT_FLAGS = dict(input_text=True, target_image=True)


class Retrieval(Task):
    name = "retrieval"
    dataset = "coco_captions"
    metric = "R@1"
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
        images = self.image_features(model, batch["images"])
        texts = self.text_features(model, batch["input_ids"], batch["attention_mask"])
        all_images, offset = gather(images)
        all_texts, _ = gather(texts)
        targets = torch.arange(images.shape[0], device=images.device) + offset
        image_to_text = model.score(images, all_texts, "retrieval").float()
        text_to_image = model.score(texts, all_images, "retrieval").float()
        return {"loss_image_to_text": F.cross_entropy(image_to_text, targets),
                "loss_text_to_image": F.cross_entropy(text_to_image, targets)}

    def loss_weights(self, model):
        return {"loss_image_to_text": 0.5, "loss_text_to_image": 0.5}

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
