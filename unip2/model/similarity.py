"""Cosine scoring with one learnable temperature per task family: score(x, y) = cos(x, y) / τ_family."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unip2.config import DecoderConfig


class CosineScorer(nn.Module):
    """cos(a, b) × exp(logit_scale[family]), exp clamped to ≤ ``logit_scale_max``.

    ``logit_scale`` holds log(1/τ) per family, initialized to log(1/``temperature_init``).
    """

    def __init__(self, *, families: tuple[str, ...], temperature_init: float = 0.07,
                 logit_scale_max: float = 100.0):
        super().__init__()
        if len(set(families)) != len(families) or not families:
            raise ValueError(f"families must be non-empty and unique, got {families}")
        self.families = tuple(families)
        self._index = {name: i for i, name in enumerate(self.families)}
        self.max_log_scale = math.log(logit_scale_max)
        self.logit_scale = nn.Parameter(torch.full((len(families),), math.log(1.0 / temperature_init)))

    @classmethod
    def from_config(cls, cfg: DecoderConfig, families: tuple[str, ...]) -> "CosineScorer":
        return cls(families=families, temperature_init=cfg.temperature_init, logit_scale_max=cfg.logit_scale_max)

    def scale(self, family: str) -> torch.Tensor:
        """Scalar 1/τ of ``family`` after the clamp (no gradient beyond the bound)."""
        if family not in self._index:
            raise KeyError(f"unknown score family {family!r}; known: {list(self.families)}")
        return self.logit_scale[self._index[family]].clamp(max=self.max_log_scale).exp()

    def forward(self, a: torch.Tensor, b: torch.Tensor, family: str) -> torch.Tensor:
        """a: ...×D queries, b: M×D candidates → ...×M scaled cosine similarities (float32 under autocast too)."""
        scale = self.scale(family)
        # fp32 even under autocast: up to 100 × a bf16 cosine would carry a ±0.4 error into the logits.
        with torch.autocast(a.device.type, enabled=False):
            cosine = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(0, 1)
        return cosine * scale
