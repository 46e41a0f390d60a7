import numpy as np
import pytest

from unip2.eval import retrieval_metrics


def brute_force_recall(similarity, text_to_image, ks):
    """Python-loop reference: rank by a full sort, one query at a time."""
    num_images, num_texts = similarity.shape
    i2t_ranks, t2i_ranks = [], []
    for i in range(num_images):
        order = list(np.argsort(-similarity[i], kind="stable"))
        i2t_ranks.append(min(order.index(t) for t in range(num_texts) if text_to_image[t] == i))
    for t in range(num_texts):
        order = list(np.argsort(-similarity[:, t], kind="stable"))
        t2i_ranks.append(order.index(text_to_image[t]))
    out = {f"i2t_R@{k}": sum(r < k for r in i2t_ranks) / num_images for k in ks}
    out |= {f"t2i_R@{k}": sum(r < k for r in t2i_ranks) / num_texts for k in ks}
    out["rsum"] = sum(out.values())
    return out


def test_matches_brute_force_with_five_captions_per_image():
    rng = np.random.default_rng(0)
    num_images = 300  # more than one row chunk
    text_to_image = rng.permutation(np.repeat(np.arange(num_images), 5))
    # Correlated with the truth so that recalls are neither 0 nor 1.
    similarity = rng.normal(size=(num_images, 5 * num_images)).astype(np.float32)
    similarity[text_to_image, np.arange(5 * num_images)] += 2.5
    ours = retrieval_metrics(similarity, text_to_image)
    reference = brute_force_recall(similarity, text_to_image, (1, 5, 10))
    assert ours.keys() == reference.keys()
    for key in reference:
        assert ours[key] == pytest.approx(reference[key]), key
    assert 0.05 < ours["i2t_R@1"] < 0.95 and 0.05 < ours["t2i_R@1"] < 0.95


def test_hand_made_case_with_known_answers():
    # 3 images, 2 captions each: texts 0,1 → image 0; 2,3 → image 1; 4,5 → image 2.
    text_to_image = np.array([0, 0, 1, 1, 2, 2])
    similarity = np.array([
        [0.1, 0.9, 0.8, 0.0, 0.0, 0.0],  # image 0: its caption 1 ranks first
        [0.9, 0.8, 0.2, 0.7, 0.0, 0.0],  # image 1: best own caption (0.7) ranks third
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # image 2: best own caption (0.5) ranks fifth
    ])
    # text → image ranks: t0: image 1,2 tie at 0.9 above 0.1 → 2; t1: 0.9 first → 0; t2: 0.8, 0.7 above 0.2 → 2;
    # t3: 0.7 first → 0; t4: 0.5 first → 0; t5: ties 0.0 at image 0, 1 → counted above → 2.
    metrics = retrieval_metrics(similarity, text_to_image, ks=(1, 3, 5))
    assert metrics["i2t_R@1"] == pytest.approx(1 / 3)
    assert metrics["i2t_R@3"] == pytest.approx(2 / 3)
    assert metrics["i2t_R@5"] == pytest.approx(1.0)
    assert metrics["t2i_R@1"] == pytest.approx(3 / 6)
    assert metrics["t2i_R@3"] == pytest.approx(1.0)
    assert metrics["t2i_R@5"] == pytest.approx(1.0)
    assert metrics["rsum"] == pytest.approx(1 / 3 + 2 / 3 + 1 + 1 / 2 + 1 + 1)


def test_ties_count_against_the_model():
    metrics = retrieval_metrics(np.zeros((4, 8)), np.repeat(np.arange(4), 2), ks=(1,))
    assert metrics == {"i2t_R@1": 0.0, "t2i_R@1": 0.0, "rsum": 0.0}


def test_images_without_text_and_bad_indices_are_refused():
    with pytest.raises(ValueError, match="no text"):
        retrieval_metrics(np.zeros((3, 4)), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.zeros((2, 3)), np.array([0, 1, 2]))
