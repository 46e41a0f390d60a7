import numpy as np
import pytest

from unip2.eval import classification_metrics


def test_top1_top5_on_hand_made_case():
    labels = np.array([0, 1, 2, 3])
    top_labels = np.array([
        [0, 9, 8, 7, 6, 5],  # top-1 hit
        [2, 1, 8, 7, 6, 5],  # top-5 hit (rank 2)
        [9, 8, 7, 6, 2, 5],  # top-5 hit (rank 5)
        [9, 8, 7, 6, 5, 3],  # rank 6: outside the top 5
    ])
    assert classification_metrics(labels, top_labels) == {"top1": 0.25, "top5": 0.75}


def test_top5_uses_the_columns_given_when_fewer_than_five():
    labels = np.array([4, 1])
    assert classification_metrics(labels, np.array([[3, 4], [1, 0]])) == {"top1": 0.5, "top5": 1.0}
    assert classification_metrics(labels, np.array([4, 0])) == {"top1": 0.5, "top5": 0.5}


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.zeros((3, 5), dtype=int))
    with pytest.raises(ValueError):
        classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 5), dtype=int))
