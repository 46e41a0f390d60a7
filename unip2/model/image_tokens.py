"""Image tokens for the shared decoder: regional (paper Eq. 2) and global (paper Eq. 3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_encoding(values: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine encoding of each scalar in ``values`` (...×K, in [0, 1]) → ...×(K·num_feats)."""
    dim_t = torch.arange(num_feats // 2, device=values.device, dtype=torch.float32)
    dim_t = temperature ** (2 * dim_t / num_feats)
    angles = values.float().unsqueeze(-1) * (2 * math.pi) / dim_t  # ...×K×F/2
    encoded = torch.cat([angles.sin(), angles.cos()], dim=-1)  # ...×K×F
    return encoded.flatten(-2).to(values.dtype)


def grid_positions(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Normalized (x, y) centres of an H×W grid, flattened row-major → (H·W)×2."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


class RegionalTokens(nn.Module):
    """q_proposal = Linear(q_sem) + B(q_box) + M(q_mask), one token per proposal.

    forward(query_features B×Q×C, boxes B×Q×4 (normalized cx, cy, w, h), masks B×Q×Hm×Wm logits)
        → B×Q×D
    """

    def __init__(self, *, in_dim: int, width: int, mask_pool_size: int, box_feats: int = 32):
        super().__init__()
        self.box_feats = box_feats
        self.mask_pool_size = mask_pool_size
        self.semantic = nn.Linear(in_dim, width)
        self.box = nn.Linear(4 * box_feats, width)
        self.mask = nn.Linear(mask_pool_size * mask_pool_size, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, query_features: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        batch, queries = boxes.shape[:2]
        pooled = F.adaptive_avg_pool2d(masks.flatten(0, 1).unsqueeze(1), self.mask_pool_size)
        pooled = pooled.view(batch, queries, -1)  # B×Q×(P·P)
        tokens = (self.semantic(query_features) + self.box(sine_encoding(boxes, self.box_feats))
                  + self.mask(pooled))
        return self.norm(tokens)


class GlobalTokens(nn.Module):
    """[AttnPool_1..M'(F_L) ; Flatten(F_L)] projected to the decoder width.

    forward(last_map B×C×H×W) → B×(M' + H·W)×D
    """

    def __init__(self, *, in_channels: int, width: int, num_pools: int, num_heads: int):
        super().__init__()
        self.project = nn.Linear(in_channels, width)
        self.position = nn.Linear(2 * 64, width)
        self.pool_query = nn.Parameter(torch.randn(num_pools, width) * 0.02)
        self.pool = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.num_pools = num_pools

    def no_weight_decay(self) -> set[str]:
        """The attention pools' learned queries: no weight decay."""
        return {"pool_query"}

    def forward(self, last_map: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = last_map.shape
        flat = self.project(last_map.flatten(2).transpose(1, 2))  # B×HW×D
        position = self.position(sine_encoding(grid_positions(height, width, last_map.device), 64))
        flat = flat + position.to(flat.dtype)
        query = self.pool_query.unsqueeze(0).expand(batch, -1, -1)
        pooled, _ = self.pool(query, flat, flat, need_weights=False)  # B×M'×D
        return self.norm(torch.cat([pooled, flat], dim=1))
