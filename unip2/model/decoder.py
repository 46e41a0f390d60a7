"""The shared task-agnostic decoder g: a learned <SPE> token + pre-LN Transformer layers with conditional MoE FFNs.

Inputs already carry their position embeddings (added by the image / text token builders). The <SPE>
output is the representation of a whole sequence; the token outputs serve the per-token tasks
(detection scores each regional token, captioning each text position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unip2.config import DecoderConfig
from unip2.model.checkpointing import checkpointed
from unip2.model.moe import ATTRIBUTES, AttributeGroups, ConditionalMoEFFN, TokenLayout, group_by_attributes

# Token-kind attributes cleared when the <SPE> attributes are derived from the sequence.
_TOKEN_KIND_NAMES = ("token_image", "token_text", "token_regional", "token_global")
_TOKEN_KIND = [ATTRIBUTES.index(name) for name in _TOKEN_KIND_NAMES]


def prefix_causal_mask(num_prefix: int, num_causal: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    """Attention mask for [prefix tokens ; causal stream] (captioning: image tokens then text tokens).

    Prefix tokens see every prefix token; causal token i sees every prefix token and causal tokens ≤ i.
    padding: B×T bool (True = pad), T = num_prefix + num_causal; padded keys are hidden from everyone.
    Returns B×T×T bool, True = query (row) may attend to key (column); B = 1 without ``padding``.
    """
    total = num_prefix + num_causal
    allowed = torch.ones(total, total, dtype=torch.bool,
                         device=padding.device if padding is not None else None).tril()
    allowed[:, :num_prefix] = True  # everyone sees the whole prefix
    allowed[:num_prefix, num_prefix:] = False  # the prefix never sees the stream
    allowed = allowed.unsqueeze(0)
    if padding is not None:
        if padding.shape[-1] != total:
            raise ValueError(f"padding has {padding.shape[-1]} positions, expected {total}")
        allowed = allowed & ~padding[:, None, :]
    return allowed


class DecoderLayer(nn.Module):
    """x + Attn(LN(x)); x + MoE-FFN(LN(x)). x: B×S×D, attributes: B×S×A."""

    def __init__(self, *, width: int, num_heads: int, ffn_dim: int, num_experts: int, top_k: int,
                 dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = ConditionalMoEFFN(width=width, ffn_dim=ffn_dim, num_experts=num_experts, top_k=top_k,
                                     dropout=dropout)

    def forward(self, x: torch.Tensor, attributes: torch.Tensor | TokenLayout, attn_mask: torch.Tensor | None,
                groups: AttributeGroups | None = None) -> torch.Tensor:
        """attn_mask: bool broadcastable to B×1×S×S (True = may attend), or None for full attention.

        attributes: the sequence's TokenLayout, or B×S×A rows; groups: ``group_by_attributes`` of the rows,
        shared by all layers.
        """
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                  dropout_p=self.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = x + F.dropout(self.proj(attended), self.dropout, self.training)
        return x + self.ffn(self.norm2(x), attributes, groups)


class UnifiedDecoder(nn.Module):
    """[<SPE>] + tokens → pre-LN Transformer with conditional MoE FFNs → final LN."""

    def __init__(self, *, width: int, num_layers: int, num_heads: int, ffn_dim: int, num_experts: int,
                 top_k: int, dropout: float = 0.0):
        super().__init__()
        self.width = width
        self.spe_token = nn.Parameter(torch.empty(1, 1, width))
        nn.init.trunc_normal_(self.spe_token, std=0.02)
        self.layers = nn.ModuleList(
            DecoderLayer(width=width, num_heads=num_heads, ffn_dim=ffn_dim, num_experts=num_experts,
                         top_k=top_k, dropout=dropout)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)
        self.checkpoint_layers = False  # recompute each layer in backward (``enable_activation_checkpointing``)
        for layer in self.layers:  # BERT-style init; the MoE FFN initializes its own experts
            for linear in (layer.qkv, layer.proj):
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def no_weight_decay(self) -> set[str]:
        """The <SPE> token is a learned embedding: no weight decay."""
        return {"spe_token"}

    @classmethod
    def from_config(cls, cfg: DecoderConfig) -> "UnifiedDecoder":
        return cls(width=cfg.width, num_layers=cfg.num_layers, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim,
                   num_experts=cfg.num_experts if cfg.use_moe else 1,
                   top_k=cfg.top_k if cfg.use_moe else 1, dropout=cfg.dropout)

    def forward(self, tokens: torch.Tensor, attributes: torch.Tensor | TokenLayout, *,
                padding_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                spe_attributes: torch.Tensor | TokenLayout | None = None) -> dict[str, torch.Tensor]:
        """Run g over one batch of sequences.

        tokens: B×T×D (position embeddings included); attributes: the sequence's ``TokenLayout`` (the
            model's tasks: static MoE groups), or B×T×A per-token rows (A = len(ATTRIBUTES)).
        padding_mask: B×T bool, True = padding (hidden from every query; its outputs are meaningless).
        attention_mask: B×T×T (or 1×T×T, T×T) bool, True = token i may attend to token j.
        spe_attributes: the <SPE> token's (B×A rows, or a one-token TokenLayout with a layout); None = the
            union of the sequence's attributes (non-padded ones, for rows) with the token-kind bits cleared.

        The mask is extended to the <SPE> position (index 0 of the internal sequence) so that
        - <SPE> attends to itself and to every non-padded token, whatever ``attention_mask`` says;
        - token i attends to <SPE> only if its ``attention_mask`` row already allows every non-padded
          token: <SPE> has seen them all, so attending to it must not leak anything i may not see
          (in a causal stream only the last real token may, and no prefix token).
        Without ``attention_mask``, every token attends to <SPE> and to every non-padded token.

        Returns {"spe": B×D, "tokens": B×T×D}.
        """
        batch, length, _ = tokens.shape
        x = torch.cat([self.spe_token.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)  # B×S×D, S = T+1
        attn_mask = self._full_mask(batch, length, padding_mask, attention_mask, tokens.device)
        groups = None
        if isinstance(attributes, TokenLayout):
            if spe_attributes is None:
                spe_attributes = TokenLayout(((1, attributes.union(clear=_TOKEN_KIND_NAMES)),))
            attrs = spe_attributes + attributes  # the <SPE> token first
        else:
            if spe_attributes is None:
                spe_attributes = self._default_spe_attributes(attributes, padding_mask)
            attrs = torch.cat([spe_attributes.unsqueeze(1).to(attributes.dtype), attributes], dim=1)  # B×S×A
            groups = group_by_attributes(attrs) if self.layers[0].ffn.gate is not None else None
        for layer in self.layers:
            if self.checkpoint_layers and self.training:
                x = checkpointed(layer, x, attrs, attn_mask, groups)
            else:
                x = layer(x, attrs, attn_mask, groups)
        x = self.norm(x)
        return {"spe": x[:, 0], "tokens": x[:, 1:]}

    @staticmethod
    def _default_spe_attributes(attributes: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """B×T×A → B×A: the task-level bits any real token carries; token-kind bits cleared."""
        if padding_mask is not None:
            attributes = attributes.masked_fill(padding_mask.unsqueeze(-1), 0)
        spe = attributes.amax(dim=1).clone()
        spe[:, _TOKEN_KIND] = 0
        return spe

    @staticmethod
    def _full_mask(batch: int, length: int, padding_mask: torch.Tensor | None,
                   attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """B×1×S×S bool (True = may attend) over [<SPE>] + tokens, or None for full attention."""
        if attention_mask is None and padding_mask is None:
            return None
        real = torch.ones(batch, length, dtype=torch.bool, device=device) if padding_mask is None \
            else ~padding_mask.to(device=device, dtype=torch.bool)  # B×T
        real_keys = torch.cat([real.new_ones(batch, 1), real], dim=1)  # B×S
        if attention_mask is None:
            return real_keys[:, None, None, :]  # B×1×1×S: nobody sees padding; <SPE> is never padded
        inner = attention_mask.to(device=device, dtype=torch.bool).expand(batch, length, length) & real[:, None, :]
        # Seeing <SPE> is allowed only where the row already covers every real token.
        sees_spe = (inner | ~real[:, None, :]).all(dim=-1, keepdim=True)  # B×T×1
        top = real_keys[:, None, :]  # B×1×S: <SPE> row
        rows = torch.cat([sees_spe, inner], dim=-1)  # B×T×S
        full = torch.cat([top, rows], dim=1)  # B×S×S
        # Every query keeps itself, so a padded (or fully masked) row never becomes all-False (NaN).
        full = full | torch.eye(length + 1, dtype=torch.bool, device=device)
        return full.unsqueeze(1)
