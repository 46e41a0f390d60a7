"""Attribute-routed conditional mixture-of-experts FFN (the conditional MoE of Uni-Perceiver-MoE).

The gate does not look at the token's features but at a small binary *attribute* vector: the modalities
of the task's input and target, the modality and kind of this token, whether it is on the target side,
and whether it is in a causal stream. Tokens with the same attributes therefore always use the same
experts, and the k chosen experts are merged by gate weight into one FFN (W = Σ g_i W_i) instead of
dispatching tokens: for one fixed task the merged FFN is all that is deployed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTRIBUTES = (
    "input_image",      # the task's input holds an image
    "input_text",       # the task's input holds text
    "target_image",     # the task's target is an image (e.g. text-to-image retrieval)
    "target_text",      # the task's target is text (captions, sentences)
    "target_category",  # the task's target is a category name
    "token_image",      # this token comes from an image
    "token_text",       # this token comes from text
    "token_regional",   # this image token is a regional (proposal) token
    "token_global",     # this image token is a global token
    "token_is_target",  # this token belongs to the target side (candidates)
    "causal",           # this token is in a causal (left-to-right) stream
)


def attribute_vector(**flags: bool) -> torch.Tensor:
    """float32 (len(ATTRIBUTES),) with 1 where ``flags[name]`` is true; an unknown name is a ValueError."""
    unknown = sorted(set(flags) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; known: {list(ATTRIBUTES)}")
    return torch.tensor([1.0 if flags.get(name, False) else 0.0 for name in ATTRIBUTES])


@dataclass
class AttributeGroups:
    """Tokens grouped by identical attribute rows (N = tokens, U = distinct rows).

    rows: U×A distinct rows; order: N token indices sorted by group; counts: tokens per group.
    """

    rows: torch.Tensor
    order: torch.Tensor
    counts: list[int]


def group_by_attributes(attributes: torch.Tensor) -> AttributeGroups:
    """attributes: ...×A → the groups of identical rows (one host sync; compute once, reuse per layer).

    For attribute tensors whose rows come from the data; the model's own sequences carry a ``TokenLayout``,
    which groups without looking at the data."""
    rows, inverse = torch.unique(attributes.reshape(-1, attributes.shape[-1]).float(), dim=0,
                                 return_inverse=True)  # U×A, N
    counts = torch.bincount(inverse, minlength=rows.shape[0]).tolist()
    return AttributeGroups(rows=rows, order=inverse.argsort(stable=True), counts=counts)


@dataclass(frozen=True)
class TokenLayout:
    """The attributes of a token sequence as contiguous segments, known before the data.

    Every sequence the model decodes is a concatenation of parts whose attributes depend on the task alone
    (regional tokens, global tokens, text), the same for every sequence of the batch. So the MoE's token
    groups are slices along T computed in Python: no ``torch.unique``, no host round-trip, one static graph
    per task. segments: ((length, attribute names that are set), ...) in sequence order.
    """

    segments: tuple[tuple[int, frozenset[str]], ...] = ()

    @classmethod
    def of(cls, length: int, **flags: bool) -> "TokenLayout":
        """``length`` tokens that all carry ``flags`` (unknown names are a ValueError)."""
        unknown = sorted(set(flags) - set(ATTRIBUTES))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {list(ATTRIBUTES)}")
        return cls(((int(length), frozenset(name for name, on in flags.items() if on)),))

    def __add__(self, other: "TokenLayout") -> "TokenLayout":
        segments = list(self.segments)
        for length, names in other.segments:
            if segments and segments[-1][1] == names:  # neighbours with the same attributes: one slice
                segments[-1] = (segments[-1][0] + length, names)
            else:
                segments.append((length, names))
        return TokenLayout(tuple(segments))

    def __len__(self) -> int:
        return sum(length for length, _ in self.segments)

    def first(self) -> "TokenLayout":
        """The layout of the first token alone."""
        return TokenLayout(((1, self.segments[0][1]),))

    def union(self, clear: tuple[str, ...] = ()) -> frozenset[str]:
        """Every attribute any token carries, less ``clear``."""
        return frozenset().union(*(names for _, names in self.segments)) - set(clear)

    def rows(self) -> tuple[frozenset[str], ...]:
        """The distinct attribute sets, in order of first appearance (U)."""
        return tuple(dict.fromkeys(names for _, names in self.segments))

    def spans(self) -> tuple[tuple[int, int, int], ...]:
        """(row index into ``rows()``, start, stop) of every segment, in sequence order."""
        rows = {names: u for u, names in enumerate(self.rows())}
        spans, start = [], 0
        for length, names in self.segments:
            spans.append((rows[names], start, start + length))
            start += length
        return tuple(spans)

    def tensor(self, batch: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """B×T×A attribute vectors (for code that needs the per-token form)."""
        vectors = [attribute_vector(**dict.fromkeys(names, True)).expand(length, -1)
                   for length, names in self.segments]
        return torch.cat(vectors).to(device=device, dtype=dtype).expand(batch, -1, -1)


class ConditionalMoEFFN(nn.Module):
    """Linear → GELU → Linear whose weights are a gate-weighted merge of ``num_experts`` experts.

    x: B×T×D tokens, attributes: B×T×A (A = len(ATTRIBUTES)) → B×T×D. The gate is a Linear(A → E);
    the top-k of its softmax are renormalized to sum to 1. With ``num_experts == 1`` it is a plain FFN
    and has no gate.
    """

    def __init__(self, *, width: int, ffn_dim: int, num_experts: int, top_k: int, dropout: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.width, self.ffn_dim = width, ffn_dim
        self.num_experts, self.top_k = num_experts, top_k
        # Experts stacked on dim 0, weights in nn.Linear's (out, in) layout.
        self.w1 = nn.Parameter(torch.empty(num_experts, ffn_dim, width))
        self.b1 = nn.Parameter(torch.zeros(num_experts, ffn_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, width, ffn_dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, width))
        self.gate = nn.Linear(len(ATTRIBUTES), num_experts) if num_experts > 1 else None
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def no_weight_decay(self) -> set[str]:
        """The experts' stacked biases (2-D, one row per expert) are biases: no weight decay."""
        return {"b1", "b2"}

    def reset_parameters(self) -> None:
        for weight in (self.w1, self.w2):
            nn.init.trunc_normal_(weight, std=0.02)
        nn.init.zeros_(self.b1)
        nn.init.zeros_(self.b2)
        if self.gate is not None:
            # Small random logits: every expert starts equally likely, but attributes still separate.
            nn.init.normal_(self.gate.weight, std=1.0 / math.sqrt(len(ATTRIBUTES)))
            nn.init.zeros_(self.gate.bias)

    def gate_probabilities(self, attributes: torch.Tensor) -> torch.Tensor:
        """attributes: ...×A → ...×E merge weights (top-k renormalized, zero elsewhere)."""
        if self.gate is None:
            return torch.ones(*attributes.shape[:-1], 1, device=attributes.device, dtype=attributes.dtype)
        return self._top_k(self.gate(attributes.to(self.gate.weight.dtype)))

    def layout_gate_probabilities(self, layout: TokenLayout) -> torch.Tensor:
        """U×E merge weights of ``layout.rows()``. The gate is linear in binary attributes, so a row's logits are
        the bias plus the weight columns of its set attributes: slices only, no tensor made from host data."""
        weight, bias = self.gate.weight, self.gate.bias
        logits = torch.stack([sum((weight[:, i] for i, name in enumerate(ATTRIBUTES) if name in names), bias)
                              for names in layout.rows()])
        return self._top_k(logits)

    def _top_k(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=-1)
        top, index = probs.topk(self.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        return torch.zeros_like(probs).scatter(-1, index, top)

    def _ffn(self, x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
        return self.dropout(F.linear(self.dropout(F.gelu(F.linear(x, w1, b1))), w2, b2))

    def _merged(self, gates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """U×E gates → the U merged experts (w1, b1, w2, b2). A (U×E)·(E×…) matmul saves no extra weight copies
        for backward beyond the merged ones."""
        gates = gates.to(self.w1.dtype)
        return ((gates @ self.w1.flatten(1)).view(-1, self.ffn_dim, self.width), gates @ self.b1,
                (gates @ self.w2.flatten(1)).view(-1, self.width, self.ffn_dim), gates @ self.b2)

    def forward(self, x: torch.Tensor, attributes: torch.Tensor | TokenLayout,
                groups: AttributeGroups | None = None) -> torch.Tensor:
        """x: B×T×D → B×T×D. ``attributes``: the sequence's ``TokenLayout`` (static groups: slices along T), or
        B×T×A per-token rows (grouped by value; ``groups`` = group_by_attributes(attributes), if known)."""
        if self.gate is None:
            return self._ffn(x, self.w1[0], self.b1[0], self.w2[0], self.b2[0])
        if isinstance(attributes, TokenLayout):
            return self._forward_layout(x, attributes)
        groups = groups if groups is not None else group_by_attributes(attributes)
        w1, b1, w2, b2 = self._merged(self.gate_probabilities(groups.rows))
        if len(groups.counts) == 1:
            return self._ffn(x, w1[0], b1[0], w2[0], b2[0])
        # One gather into groups, one merged FFN per group, one scatter back: never per token.
        flat = x.reshape(-1, x.shape[-1])  # N×D
        chunks = flat.index_select(0, groups.order).split(groups.counts)
        outputs = torch.cat([self._ffn(chunk, w1[u], b1[u], w2[u], b2[u]) for u, chunk in enumerate(chunks)])
        return torch.empty_like(outputs).index_copy(0, groups.order, outputs).view(x.shape)

    def _forward_layout(self, x: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        if len(layout) != x.shape[1]:
            raise ValueError(f"the layout describes {len(layout)} tokens, the sequence has {x.shape[1]}")
        w1, b1, w2, b2 = self._merged(self.layout_gate_probabilities(layout))
        spans = layout.spans()
        if len(spans) == 1:
            return self._ffn(x, w1[0], b1[0], w2[0], b2[0])
        # One merged FFN per segment (a slice along T): shapes known before the data.
        return torch.cat([self._ffn(x[:, start:stop], w1[u], b1[u], w2[u], b2[u]) for u, start, stop in spans],
                         dim=1)


def deployment_parameter_count(module: nn.Module) -> int:
    """Parameters as deployed for one fixed task, the count the Uni-Perceiver papers report.

    For a fixed task every token's attributes are known in advance, so each ConditionalMoEFFN collapses
    to one merged expert: (E−1)/E of its expert parameters and its gate are not deployed.
    """
    total = sum(p.numel() for p in module.parameters())
    for sub in module.modules():
        if isinstance(sub, ConditionalMoEFFN) and sub.gate is not None:
            experts = sum(p.numel() for p in (sub.w1, sub.b1, sub.w2, sub.b2))
            total -= experts - experts // sub.num_experts
            total -= sum(p.numel() for p in sub.gate.parameters())
    return total
