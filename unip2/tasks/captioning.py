"""Image captioning: image tokens + previous words → next word scored against the candidate vocabulary.

The candidates are the model's ``vocabulary_ids``: the tokenizer's whole vocabulary, or the tokens of the
training captions (``tasks.caption_vocabulary``). Training is teacher-forced over every position in one
pass: the text stream is causal (text token i sees the image and text tokens ≤ i) in both the text
encoder and the shared decoder.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unip2.model.decoder import prefix_causal_mask
from unip2.tasks.base import Task, local_gather
from unip2.tasks.captioned_images import preprocess_captioned_images
from unip2.tasks.beam_search import beam_search

TASK_FLAGS = dict(input_image=True, input_text=True, target_text=True)


class Captioning(Task):
    name = "captioning"
    dataset = "coco_captions"
    metric = "CIDEr"

    def preprocess(self, batch, *, image_size, tokenizer, train, rng, max_text_length=32):
        return preprocess_captioned_images(batch, image_size=image_size, tokenizer=tokenizer, train=train, rng=rng,
                                           max_text_length=max_text_length)

    def vocabulary(self, model) -> torch.Tensor:
        return model.encode_vocabulary(token_is_target=True, **TASK_FLAGS)

    def next_word_features(self, model, image_tokens, image_attributes, input_ids, attention_mask):
        """Decoder outputs at every text position: B×L×D (position i predicts token i+1)."""
        text = model.encode_text(input_ids, attention_mask, causal=True)
        text_attributes = model.attributes(text, token_text=True, causal=True, **TASK_FLAGS)
        tokens = torch.cat([image_tokens, text], dim=1)
        attributes = torch.cat([image_attributes, text_attributes], dim=1)
        padding = torch.cat([torch.zeros(image_tokens.shape[:2], dtype=torch.bool, device=text.device),
                             attention_mask == 0], dim=1)
        mask = prefix_causal_mask(image_tokens.shape[1], text.shape[1], padding)
        out = model.decode(tokens, attributes, padding_mask=padding, attention_mask=mask)["tokens"]
        return out[:, image_tokens.shape[1]:]

    def loss(self, model, batch, *, gather=local_gather):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] < 2:
            raise ValueError("captioning needs at least one word after <s>")
        encoding = model.encode_image(batch["images"])
        image_tokens, image_attributes = model.image_sequence(encoding, **TASK_FLAGS)
        features = self.next_word_features(model, image_tokens, image_attributes, ids[:, :-1], mask[:, :-1])
        logits = model.score(features, self.vocabulary(model), "vocabulary")  # B×(L-1)×K
        # Token ids → their index among the K candidates (-100, left out, for a token that is none).
        targets = model.vocabulary_index[ids[:, 1:]].masked_fill(mask[:, 1:] == 0, -100)
        smoothing = model.config.tasks.caption_label_smoothing
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                               label_smoothing=smoothing)
        return {"loss_caption": loss}

    def loss_weights(self, model):
        return {"loss_caption": 1.0}

    @torch.no_grad()
    def predict(self, model, batch, *, beam_size: int | None = None, max_length: int | None = None,
                **options: Any) -> list[dict]:
        tokenizer = model.tokenizer
        beam_size = beam_size or model.config.tasks.caption_beam_size
        max_length = max_length or model.config.tasks.caption_max_length
        encoding = model.encode_image(batch["images"])
        image_tokens, image_attributes = model.image_sequence(encoding, **TASK_FLAGS)
        vocabulary = self.vocabulary(model)

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """N×t token-id prefixes → N×V log-probabilities over token ids (-inf for non-candidates)."""
            mask = torch.ones_like(prefixes)
            features = self.next_word_features(model, image_tokens[rows], image_attributes[rows], prefixes, mask)
            log_probs = model.score(features[:, -1], vocabulary, "vocabulary").float().log_softmax(-1)  # N×K
            by_token = log_probs.new_full((log_probs.shape[0], tokenizer.vocab_size), float("-inf"))
            return by_token.index_copy_(1, model.vocabulary_ids, log_probs)

        banned = tuple(i for i in tokenizer.special_ids if i != tokenizer.eos_id)
        beams = beam_search(step, batch_size=image_tokens.shape[0], bos_id=tokenizer.bos_id,
                            eos_id=tokenizer.eos_id, max_length=max_length, beam_size=beam_size,
                            banned_ids=banned, device=image_tokens.device)
        results = []
        for image_id, row in zip(batch["image_id"], beams):
            texts = [(tokenizer.decode(ids), score) for ids, score in row]
            results.append({"image_id": int(image_id), "caption": texts[0][0] if texts else "",
                            "beams": [{"caption": t, "score": s} for t, s in texts]})
        return results
