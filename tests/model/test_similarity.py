"""CosineScorer: cosine × per-family scale, initial temperature, clamp, unknown family."""

import math

import pytest
import torch
import torch.nn.functional as F

from unip2.config import DecoderConfig
from unip2.model.similarity import CosineScorer

FAMILIES = ("category", "vocabulary", "retrieval")


def test_temperature_init_and_scores():
    scorer = CosineScorer.from_config(DecoderConfig(temperature_init=0.05, logit_scale_max=100.0), FAMILIES)
    assert all("logit_scale" in name for name, _ in scorer.named_parameters())
    assert torch.allclose(scorer.scale("vocabulary"), torch.tensor(20.0))
    a, b = torch.randn(2, 3, 8), torch.randn(5, 8)
    scores = scorer(a, b, "category")
    assert scores.shape == (2, 3, 5)
    expected = F.cosine_similarity(a.unsqueeze(-2), b, dim=-1) * 20.0
    assert torch.allclose(scores, expected, atol=1e-5)


def test_scale_is_clamped_and_families_are_independent():
    scorer = CosineScorer(families=FAMILIES, temperature_init=0.07, logit_scale_max=50.0)
    with torch.no_grad():
        scorer.logit_scale[0] = math.log(1000.0)
    assert torch.allclose(scorer.scale("category"), torch.tensor(50.0))
    assert torch.allclose(scorer.scale("retrieval"), torch.tensor(1 / 0.07))
    scorer(torch.randn(4, 8), torch.randn(6, 8), "category").sum().backward()
    assert scorer.logit_scale.grad[0] == 0  # no gradient pushes past the clamp
    scorer.logit_scale.grad = None
    scorer(torch.randn(4, 8), torch.randn(6, 8), "retrieval").sum().backward()
    assert scorer.logit_scale.grad[2] != 0 and scorer.logit_scale.grad[1] == 0


def test_unknown_family_names_the_known_ones():
    scorer = CosineScorer(families=FAMILIES)
    with pytest.raises(KeyError, match="vocabulary"):
        scorer(torch.randn(1, 4), torch.randn(2, 4), "caption")
