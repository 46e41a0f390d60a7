"""Image-text retrieval recall R@K in both directions, with several captions per image.

Karpathy test protocol: the COCO 5k test (5,000 images, ~25,000 captions) and the Flickr30k 1k test
(1,000 images, 5,000 captions) are simply the rows of those datasets' Karpathy ``test`` split: every
image of the split against every caption of the split, one similarity matrix, no re-sampling.

- image → text: an image is a hit at K when ANY of its captions ranks within the top K texts.
- text → image: each caption has exactly one right image; a hit when that image ranks within the top K.

Ties count against the model: a candidate scoring the same as the right answer ranks above it, so a
constant similarity matrix (e.g. an untrained model) scores 0 rather than 1.
"""

from __future__ import annotations

import numpy as np

# Rows of the similarity matrix processed at once: bounds memory to a few chunk×num_texts arrays
# (256 × 25,000 ≈ 6.4M entries for the COCO 5k test).
_ROW_CHUNK = 256


def retrieval_metrics(similarity: np.ndarray, text_to_image: np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall at each K, image→text and text→image, as fractions.

    Args:
        similarity: num_images×num_texts scores, higher = more similar.
        text_to_image: num_texts int, the index (row of ``similarity``) of each text's image. Every
            image needs at least one text.
        ks: the cut-offs K.

    Returns:
        {"i2t_R@K" for each K, "t2i_R@K" for each K, "rsum": the sum of all of them (max 2·len(ks))}.
    """
    similarity = np.asarray(similarity)
    text_to_image = np.asarray(text_to_image).astype(np.int64)
    num_images, num_texts = similarity.shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must have num_texts={num_texts} entries, got {text_to_image.shape}")
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(f"text_to_image holds indices outside [0, {num_images})")
    captions_per_image = np.bincount(text_to_image, minlength=num_images)
    if num_images == 0 or (captions_per_image == 0).any():
        raise ValueError(f"{int((captions_per_image == 0).sum())} image(s) have no text; drop them first")

    right_score = similarity[text_to_image, np.arange(num_texts)]  # num_texts: s[image of t, t]
    i2t_rank = np.empty(num_images, dtype=np.int64)  # wrong texts ranked at or above the best right one
    t2i_rank = np.zeros(num_texts, dtype=np.int64)   # wrong images ranked at or above the right one
    for start in range(0, num_images, _ROW_CHUNK):
        rows = np.arange(start, min(start + _ROW_CHUNK, num_images))
        block = similarity[rows]                                 # chunk×num_texts
        is_right = text_to_image[None, :] == rows[:, None]       # chunk×num_texts
        best_right = np.where(is_right, block, -np.inf).max(axis=1)
        i2t_rank[rows] = ((block >= best_right[:, None]) & ~is_right).sum(axis=1)
        t2i_rank += ((block >= right_score[None, :]) & ~is_right).sum(axis=0)

    metrics = {f"i2t_R@{k}": float((i2t_rank < k).mean()) for k in ks}
    metrics |= {f"t2i_R@{k}": float((t2i_rank < k).mean()) for k in ks}
    metrics["rsum"] = sum(metrics.values())
    return metrics
