"""Region proposal network: MaskDINO-like, with a foreground/background objectness only.

    features ─ PixelEncoder ─ memory (B×S×D), mask features (B×D×Hm×Wm)
    query selection: every memory token predicts objectness and a box relative to its own anchor;
        the top-Q tokens by objectness give the initial reference boxes (detached) and query content
        (their projected memory, detached), as in DINO / MaskDINO "two-stage" selection.
    query decoder: per layer self-attention → deformable cross-attention around the reference box →
        FFN; the box head predicts an inverse-sigmoid delta on the (detached) reference.
    heads (shared by the selection step and every decoder layer): objectness logit, box delta MLP,
        mask embedding MLP dotted with the mask features.

Boxes are normalized (cx, cy, w, h) in the frame of the input tensor the backbone saw (padding
included). MaskDINO's mask-enhanced box initialization is ``mask_enhanced_anchors``; its denoising queries
(training only, given the targets) are ``denoising_queries`` (unip2/model/denoising.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unip2.config import ProposalConfig
from unip2.model.box_ops import box_xyxy_to_cxcywh, masks_to_boxes
from unip2.model.denoising import DenoisingQueries, denoising_queries
from unip2.model.deformable_attention import MultiScaleDeformableAttention
from unip2.model.pixel_encoder import FeedForward, PixelEncoder, grid_centres, sine_position_encoding

# Anchors near the border or too large have no useful inverse sigmoid; they are never selected.
_ANCHOR_RANGE = (0.01, 0.99)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between: ...×in_dim → ...×out_dim."""

    def __init__(self, *, in_dim: int, hidden: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.logit(x, eps=1e-5)


def level_anchors(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """One anchor box per memory token: S×4 normalized (cx, cy, w, h), side 0.05·2^level."""
    anchors = []
    for level, (height, width) in enumerate(spatial_shapes):
        centres = grid_centres(height, width, device)
        size = centres.new_full(centres.shape, 0.05 * 2.0 ** level)
        anchors.append(torch.cat([centres, size], dim=-1))
    return torch.cat(anchors, dim=0)


def mask_enhanced(boxes: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """MaskDINO's anchors: the tight normalized cxcywh box of each mask (logit > 0), ``boxes`` where it is empty.
    boxes: B×Q×4, mask_logits: B×Q×H×W (the masks span the same frame as the boxes)."""
    batch, queries, height, width = mask_logits.shape
    xyxy = masks_to_boxes(mask_logits.reshape(batch * queries, height, width) > 0).view(batch, queries, 4)
    xyxy = xyxy / xyxy.new_tensor([width, height, width, height])
    empty = (xyxy[..., 2:] <= xyxy[..., :2]).any(-1, keepdim=True)
    from_masks = box_xyxy_to_cxcywh(xyxy).clamp(*_ANCHOR_RANGE)
    return torch.where(empty, boxes, from_masks.to(boxes.dtype))


class QueryDecoderLayer(nn.Module):
    """Post-norm self-attention → deformable cross-attention → FFN.

    forward(queries B×Q×D, query_pos B×Q×D, reference_boxes B×Q×L×4, memory B×S×D,
            spatial_shapes L×2, level_start_index L) → B×Q×D
    """

    def __init__(self, *, dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int,
                 dropout: float):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attention = MultiScaleDeformableAttention(dim=dim, num_heads=num_heads,
                                                             num_levels=num_levels, num_points=num_points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, hidden=ffn_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, reference_boxes: torch.Tensor,
                memory: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask: B×Q×Q bool, True = query may NOT attend to key (denoising groups), or None."""
        q = k = queries + query_pos
        if attention_mask is not None:  # one mask per batch element and head, as MultiheadAttention wants
            attention_mask = attention_mask.repeat_interleave(self.self_attention.num_heads, dim=0)
        attended, _ = self.self_attention(q, k, queries, attn_mask=attention_mask, need_weights=False)
        queries = self.norm1(queries + self.dropout(attended))
        attended = self.cross_attention(queries + query_pos, reference_boxes, memory, spatial_shapes,
                                        level_start_index)
        queries = self.norm2(queries + self.dropout(attended))
        return self.norm3(queries + self.ffn(queries))


class RegionProposalNetwork(nn.Module):
    """Class-agnostic proposals with boxes, masks and query features.

    forward(features: list of L maps B×C_l×H_l×W_l, finest first) → dict:
        query_features: B×Q×D, the last decoder layer's (normed) output per proposal (q_sem)
        boxes: B×Q×4 normalized (cx, cy, w, h) in [0, 1]
        objectness: B×Q logits
        masks: B×Q×Hm×Wm logits, (Hm, Wm) = 2·(H_0, W_0)
        aux_outputs: list (decoder_layers − 1) of {objectness, boxes, masks} of the earlier layers
        enc_outputs: {objectness B×Q, boxes B×Q×4, masks B×Q×Hm×Wm} of the selected encoder tokens
        With ``layer_masks=False`` the earlier layers' and the denoising queries' outputs have no ``masks``
        (and the encoder's neither, unless mask-enhanced anchors read them): only the mask losses read them.
        denoising (training with ``denoising_queries`` > 0 and targets given, and the batch has boxes):
            {"layers": per decoder layer {objectness, boxes, masks} of the denoising queries,
             "matches": per image (query index, target index), "groups": G}
    """

    def __init__(self, *, in_channels: list[int], dim: int, num_heads: int, num_points: int,
                 encoder_layers: int, decoder_layers: int, ffn_dim: int, num_queries: int, dropout: float,
                 mask_enhanced_anchors: bool = False, denoising_queries: int = 0, denoising_box_noise: float = 0.4):
        super().__init__()
        self.dim, self.num_queries, self.mask_enhanced_anchors = dim, num_queries, mask_enhanced_anchors
        self.denoising_budget, self.denoising_box_noise = denoising_queries, denoising_box_noise
        # Proposals have no classes: a denoising query's content is this one learned vector.
        self.denoising_content = nn.Parameter(torch.zeros(1, 1, dim)) if denoising_queries > 0 else None
        num_levels = len(in_channels)
        self.pixel_encoder = PixelEncoder(in_channels=in_channels, dim=dim, num_heads=num_heads,
                                          num_points=num_points, num_layers=encoder_layers,
                                          ffn_dim=ffn_dim, dropout=dropout)
        # Query selection: memory → proposal features.
        self.memory_proj = nn.Linear(dim, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            QueryDecoderLayer(dim=dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points,
                              ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(decoder_layers))
        self.box_position = MLP(in_dim=2 * dim, hidden=dim, out_dim=dim, num_layers=2)
        self.decoder_norm = nn.LayerNorm(dim)
        self.objectness_head = nn.Linear(dim, 1)
        self.box_head = MLP(in_dim=dim, hidden=dim, out_dim=4, num_layers=3)
        self.mask_head = MLP(in_dim=dim, hidden=dim, out_dim=dim, num_layers=3)
        self.reset_parameters()

    @classmethod
    def from_config(cls, cfg: ProposalConfig, in_channels: list[int]) -> "RegionProposalNetwork":
        return cls(in_channels=list(in_channels), dim=cfg.dim, num_heads=cfg.num_heads,
                   num_points=cfg.num_points, encoder_layers=cfg.encoder_layers,
                   decoder_layers=cfg.decoder_layers, ffn_dim=cfg.ffn_dim, num_queries=cfg.num_queries,
                   dropout=cfg.dropout, mask_enhanced_anchors=cfg.mask_enhanced_anchors,
                   denoising_queries=cfg.denoising_queries, denoising_box_noise=cfg.denoising_box_noise)

    def reset_parameters(self) -> None:
        # Focal-loss prior: every token starts as background with probability 0.99.
        nn.init.constant_(self.objectness_head.bias, -math.log((1 - 0.01) / 0.01))
        # Boxes start at their anchor / reference.
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def _heads(self, hidden: torch.Tensor, reference_unsig: torch.Tensor,
               mask_features: torch.Tensor, masks: bool = True) -> dict[str, torch.Tensor]:
        """hidden B×Q×D (normed), reference_unsig B×Q×4 → objectness, boxes (fp32: box math stays out of
        bf16), and masks if ``masks``."""
        outputs = {"objectness": self.objectness_head(hidden).squeeze(-1),
                   "boxes": (reference_unsig.float() + self.box_head(hidden).float()).sigmoid()}
        if masks:
            outputs["masks"] = torch.einsum("bqc,bchw->bqhw", self.mask_head(hidden), mask_features)
        return outputs

    def forward(self, features: list[torch.Tensor], targets: list[dict] | None = None, *,
                layer_masks: bool = True) -> dict:
        """targets (training only): per image {"boxes": N×4 normalized cxcywh}, for the denoising queries.
        layer_masks: compute the masks of every layer (the mask losses' deep supervision), not only the last's."""
        encoded = self.pixel_encoder(features)
        memory, mask_features = encoded["memory"], encoded["mask_features"]
        spatial_shapes, level_start_index = encoded["spatial_shapes"], encoded["level_start_index"]
        tokens = memory.shape[1]
        if tokens < self.num_queries:
            raise ValueError(f"{tokens} feature tokens cannot give num_queries={self.num_queries} proposals; "
                             "use a larger input or fewer queries")

        # ---- query selection
        shapes = [tuple(feature.shape[-2:]) for feature in features]
        anchors = level_anchors(shapes, memory.device)  # S×4
        valid = ((anchors > _ANCHOR_RANGE[0]) & (anchors < _ANCHOR_RANGE[1])).all(-1)  # S
        anchors_unsig = inverse_sigmoid(anchors.clamp(*_ANCHOR_RANGE))  # fp32
        proposal_memory = self.memory_norm(self.memory_proj(memory))  # B×S×D
        token_objectness = self.objectness_head(proposal_memory).squeeze(-1)  # B×S
        score = token_objectness.detach().masked_fill(~valid, float("-inf"))
        top = score.topk(self.num_queries, dim=1).indices  # B×Q
        selected = torch.gather(proposal_memory, 1, top.unsqueeze(-1).expand(-1, -1, self.dim))  # B×Q×D
        selected_anchor = anchors_unsig[top]  # B×Q×4
        enc_outputs = self._heads(selected, selected_anchor, mask_features,
                                  masks=layer_masks or self.mask_enhanced_anchors)

        # ---- query decoder with iterative box refinement
        queries = selected.detach()
        reference = enc_outputs["boxes"].detach()  # B×Q×4 in [0, 1]
        if self.mask_enhanced_anchors:
            reference = mask_enhanced(reference, enc_outputs["masks"].detach())
        denoising = self._denoising(targets, memory.device)
        attention_mask = None
        if denoising is not None:  # [denoising groups | matching queries], see unip2/model/denoising.py
            content = self.denoising_content.expand(queries.shape[0], denoising.count, -1).to(queries.dtype)
            queries = torch.cat([content, queries], dim=1)
            reference = torch.cat([denoising.reference.to(reference.dtype), reference], dim=1)
            attention_mask = denoising.attention_mask
        layer_outputs = []
        for index, layer in enumerate(self.layers):
            query_pos = self.box_position(sine_position_encoding(reference, self.dim // 2).to(queries.dtype))
            level_reference = reference.unsqueeze(2).expand(-1, -1, len(shapes), -1)  # B×Q×L×4
            queries = layer(queries, query_pos, level_reference, memory, spatial_shapes, level_start_index,
                            attention_mask)
            hidden = self.decoder_norm(queries)
            outputs = self._heads(hidden, inverse_sigmoid(reference), mask_features,
                                  masks=layer_masks or index == len(self.layers) - 1)
            outputs["query_features"] = hidden
            layer_outputs.append(outputs)
            # The next layer refines from this box, but gradients stay within each layer.
            reference = outputs["boxes"].detach()

        skip = 0 if denoising is None else denoising.count
        matching = [{key: out[key][:, skip:] for key in out} for out in layer_outputs]
        final = matching[-1]
        heads = ("objectness", "boxes", "masks") if layer_masks else ("objectness", "boxes")
        aux_outputs = [{key: out[key] for key in heads} for out in matching[:-1]]
        result = {"query_features": final["query_features"], "boxes": final["boxes"],
                  "objectness": final["objectness"], "masks": final["masks"],
                  "aux_outputs": aux_outputs, "enc_outputs": enc_outputs}
        if denoising is not None:
            result["denoising"] = {
                "layers": [{key: out[key][:, :skip] for key in heads} for out in layer_outputs],
                "matches": denoising.matches(), "groups": denoising.groups}
        return result

    def _denoising(self, targets: list[dict] | None, device: torch.device) -> DenoisingQueries | None:
        if not (self.training and self.denoising_budget > 0 and targets is not None):
            return None
        return denoising_queries(targets, budget=self.denoising_budget, noise=self.denoising_box_noise,
                                 num_matching=self.num_queries, device=device)
