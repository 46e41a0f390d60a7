"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

Each query attends to ``num_points`` sampled locations per head and per feature level, around its
reference point. Locations come from learned offsets; the sampled values are mixed with learned,
softmax-normalized weights. Sampling is bilinear with zero padding (``grid_sample``,
``align_corners=False``): a normalized location (x, y) reads pixel coordinates (x·W − 0.5, y·H − 0.5),
the convention of the original CUDA kernel, so a fused kernel can replace
``multi_scale_deformable_attention`` without changing the module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes,
                                     sampling_locations: torch.Tensor,
                                     attention_weights: torch.Tensor) -> torch.Tensor:
    """The sampling-and-mixing core.

    value: B×S×H×Dh, the L levels' tokens flattened row-major and concatenated (S = Σ H_l·W_l).
    spatial_shapes: (H_l, W_l) of each level: L pairs of ints, or an L×2 long tensor.
    sampling_locations: B×Q×H×L×P×2, normalized (x, y) in [0, 1] (outside reads zeros).
    attention_weights: B×Q×H×L×P.
    Returns B×Q×(H·Dh).
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(shapes):
        # B×HW×H×Dh → (B·H)×Dh×H_l×W_l
        level_value = per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # B×Q×H×P×2 → (B·H)×Q×P×2
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # (B·H)×Dh×Q×P
    stacked = torch.stack(sampled, dim=-2)  # (B·H)×Dh×Q×L×P
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    out = (stacked * weights).sum(dim=(-1, -2))  # (B·H)×Dh×Q
    return out.view(batch, heads * head_dim, queries).transpose(1, 2)


def level_shapes(spatial_shapes) -> list[tuple[int, int]]:
    """(H_l, W_l) of each level as Python ints. The model passes them as ints (a shape is known before the data,
    and reading a device tensor back would sync); an L×2 tensor is read once here."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of queries over multi-scale value tokens.

    forward(query B×Q×D, reference_points B×Q×L×2 (x, y) or B×Q×L×4 (cx, cy, w, h), all normalized;
            value B×S×D; spatial_shapes L pairs of ints (or L×2 long); level_start_index L offsets;
            value_padding_mask B×S bool (True = padding) or None) → B×Q×D

    With (x, y) references the offsets are in pixels of each level; with boxes they are fractions of
    the box (offset / num_points · w/2, · h/2), so sampling scales with the box.
    """

    def __init__(self, *, dim: int, num_heads: int, num_levels: int, num_points: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Start with each head looking in its own direction, point k at distance k: a spread-out
        # pattern that learning then bends, instead of every point on the reference.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        bias = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        bias = bias * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten())
        nn.init.zeros_(self.attention_weights.weight)  # uniform weights at first
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                value_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, queries, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        shapes = level_shapes(spatial_shapes)
        if len(shapes) != levels:
            raise ValueError(f"expected {levels} levels, got spatial_shapes {shapes}")
        # Levels are split by their sizes; level_start_index is their cumulative sum, kept in the
        # signature for kernels that index by it.
        del level_start_index
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask.unsqueeze(-1), 0.0)
        value = value.view(batch, value.shape[1], heads, self.dim // heads)

        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, queries, heads, levels, points)

        reference = reference_points[:, :, None, :, None, :]  # B×Q×1×L×1×(2|4)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of level l: divided by (W_l, H_l), Python numbers (no tensor from the host).
            scaled = torch.stack([torch.stack([offsets[:, :, :, level, :, 0] / width,
                                               offsets[:, :, :, level, :, 1] / height], dim=-1)
                                  for level, (height, width) in enumerate(shapes)], dim=3)
            locations = reference + scaled
        elif reference_points.shape[-1] == 4:
            locations = reference[..., :2] + offsets / points * reference[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference_points.shape)}")
        out = multi_scale_deformable_attention(value, shapes, locations, weights)
        return self.output_proj(out)
