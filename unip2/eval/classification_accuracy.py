"""Top-1 / top-5 accuracy from each image's ranked predicted labels."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, top_labels: np.ndarray) -> dict[str, float]:
    """Accuracy of ranked predictions, as fractions in [0, 1].

    Args:
        labels: N int, the true class of each image.
        top_labels: N×k int, predicted classes best first (k ≥ 1).

    Returns:
        {"top1": first column correct, "top5": the label among the first min(k, 5) columns}.
        With k < 5, "top5" is top-k accuracy over the k columns given.
    """
    labels = np.asarray(labels)
    top_labels = np.asarray(top_labels)
    if top_labels.ndim == 1:
        top_labels = top_labels[:, None]
    if labels.ndim != 1 or top_labels.ndim != 2 or top_labels.shape[0] != labels.shape[0]:
        raise ValueError(f"labels must be N and top_labels N×k; got {labels.shape} and {top_labels.shape}")
    if labels.shape[0] == 0 or top_labels.shape[1] == 0:
        raise ValueError("classification_metrics needs at least one image and one predicted label")
    hits = top_labels[:, :5] == labels[:, None]  # N×min(k,5)
    return {"top1": float(hits[:, 0].mean()), "top5": float(hits.any(axis=1).mean())}
