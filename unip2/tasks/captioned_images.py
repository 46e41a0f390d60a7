"""Preprocessing shared by the two tasks that read captioned images (captioning, retrieval)."""

from __future__ import annotations

import numpy as np

from unip2.tasks.base import image_batch, image_ids, object_array
from unip2.tasks.preprocessing import center_resize, decode_image


def preprocess_captioned_images(batch: dict, *, image_size: int, tokenizer, train: bool, rng: np.random.Generator,
                                max_text_length: int) -> dict[str, np.ndarray]:
    """Images resized (no flip: captions say "left of"), one caption per image tokenized (random when
    training, the first otherwise), all captions kept as references."""
    images = [center_resize(decode_image(data), image_size) for data in batch["image"]]
    out = {"images": image_batch(images), "image_id": image_ids(batch)}
    if "captions" in batch:
        captions = [list(c) for c in batch["captions"]]
        chosen = [c[int(rng.integers(len(c)))] if train else c[0] for c in captions]
        out["input_ids"], out["attention_mask"] = tokenizer.encode_batch(chosen, max_text_length)
        out["references"] = object_array([np.asarray(c, dtype=object) for c in captions])
    return out
