"""Pixel encoder: multi-scale backbone maps → deformable-encoder memory and mask features.

Each backbone level is projected to ``dim`` (1×1 conv + GroupNorm); all levels are flattened into one
token sequence with a sine position encoding plus a learned level embedding, and refined by
deformable self-attention layers. The finest level of the result, upsampled ×2 and passed through a
small conv head, is the mask-feature map that query mask embeddings are dotted with.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unip2.model.deformable_attention import MultiScaleDeformableAttention


def sine_position_encoding(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine encoding of each coordinate: ...×K in [0, 1] → ...×(K·num_feats), float32.

    Each coordinate gets ``num_feats`` channels: sin and cos of coord·2π / temperature^(2i/num_feats).
    """
    dim_t = torch.arange(num_feats // 2, device=coords.device, dtype=torch.float32)
    dim_t = temperature ** (2 * dim_t / num_feats)
    angles = coords.float().unsqueeze(-1) * (2 * math.pi) / dim_t  # ...×K×F/2
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def grid_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Normalized (x, y) pixel centres of an H×W map, row-major → (H·W)×2."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


def norm_groups(dim: int) -> int:
    """GroupNorm groups for ``dim`` channels: 32 when it divides dim, else the largest divisor below."""
    return math.gcd(32, dim)


class FeedForward(nn.Module):
    """Linear → ReLU → dropout → Linear → dropout: B×N×D → B×N×D."""

    def __init__(self, *, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN over multi-scale tokens.

    forward(tokens B×S×D, position B×S×D, reference_points B×S×L×2, spatial_shapes L×2,
            level_start_index L) → B×S×D
    """

    def __init__(self, *, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int,
                 dropout: float):
        super().__init__()
        self.attention = MultiScaleDeformableAttention(dim=dim, num_heads=num_heads, num_levels=num_levels,
                                                       num_points=num_points)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, hidden=ffn_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor) -> torch.Tensor:
        attended = self.attention(tokens + position, reference_points, tokens, spatial_shapes, level_start_index)
        tokens = self.norm1(tokens + self.dropout(attended))
        return self.norm2(tokens + self.ffn(tokens))


class PixelEncoder(nn.Module):
    """Backbone maps → encoder memory and mask features.

    forward(features: list of L maps B×C_l×H_l×W_l, finest first) → dict:
        memory: B×S×D encoder output tokens, levels concatenated row-major (S = Σ H_l·W_l)
        spatial_shapes: L pairs (H_l, W_l) of Python ints
        level_start_index: L Python ints, offset of each level in S
        mask_features: B×D×Hm×Wm with (Hm, Wm) = 2·(H_0, W_0)
    """

    def __init__(self, *, in_channels: list[int], dim: int, num_heads: int, num_points: int, num_layers: int,
                 ffn_dim: int, dropout: float):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even for the sine position encoding, got {dim}")
        self.dim = dim
        self.num_levels = len(in_channels)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, dim, kernel_size=1), nn.GroupNorm(norm_groups(dim), dim))
            for channels in in_channels)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim=dim, num_heads=num_heads, num_levels=self.num_levels,
                                   num_points=num_points, ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(num_layers))
        self.mask_head = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), nn.GroupNorm(norm_groups(dim), dim),
            nn.ReLU(inplace=True), nn.Conv2d(dim, dim, kernel_size=1))
        self.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """The per-level embedding is a learned position code: no weight decay."""
        return {"level_embed"}

    def reset_parameters(self) -> None:
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        nn.init.normal_(self.level_embed)
        for module in self.mask_head:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        device = features[0].device
        tokens, positions, centres, shapes = [], [], [], []
        for level, (feature, proj) in enumerate(zip(features, self.input_proj)):
            height, width = feature.shape[-2:]
            shapes.append((int(height), int(width)))
            tokens.append(proj(feature).flatten(2).transpose(1, 2))  # B×HW×D
            centre = grid_centres(height, width, device)  # HW×2
            centres.append(centre)
            positions.append(sine_position_encoding(centre, self.dim // 2) + self.level_embed[level])
        memory = torch.cat(tokens, dim=1)  # B×S×D
        position = torch.cat(positions, dim=0).to(memory.dtype).unsqueeze(0)  # 1×S×D
        # Shapes and level offsets as Python ints: known before the data, never read back from the device.
        spatial_shapes = tuple(shapes)
        sizes = [h * w for h, w in shapes]
        level_start_index = tuple(sum(sizes[:level]) for level in range(len(sizes)))
        # Without padding every level sees the same normalized point: B×S×L×2.
        reference = torch.cat(centres, dim=0).to(memory.dtype)
        reference = reference[None, :, None, :].expand(memory.shape[0], -1, self.num_levels, -1)
        position = position.expand(memory.shape[0], -1, -1)
        for layer in self.layers:
            memory = layer(memory, position, reference, spatial_shapes, level_start_index)

        height, width = shapes[0]
        finest = memory[:, :height * width].transpose(1, 2).reshape(memory.shape[0], self.dim, height, width)
        finest = F.interpolate(finest, scale_factor=2.0, mode="bilinear", align_corners=False)
        return {"memory": memory, "spatial_shapes": spatial_shapes, "level_start_index": level_start_index,
                "mask_features": self.mask_head(finest)}
