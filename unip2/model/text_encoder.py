"""RoBERTa-style text encoder (transformers, built from a config) projected to the decoder width.

Random init by default; a local pretrained directory may be named instead. Nothing is ever fetched
from a hub: HF_HUB_OFFLINE is set before transformers is imported and loading is local-files-only.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import RobertaConfig, RobertaModel  # noqa: E402

from unip2.config import TextConfig  # noqa: E402
from unip2.model.tokenizer import TextTokenizer  # noqa: E402

# RoBERTa numbers positions from pad_id + 1, so max_length tokens need max_length + 2 position rows.
POSITION_OFFSET = 2


class TextEncoder(nn.Module):
    """input_ids, attention_mask: B×L → B×L×out_width (RoBERTa hidden states → Linear)."""

    def __init__(self, *, model: RobertaModel, out_width: int):
        super().__init__()
        self.model = model
        self.proj = nn.Linear(model.config.hidden_size, out_width)

    @classmethod
    def from_config(cls, cfg: TextConfig, out_width: int, tokenizer: TextTokenizer | None = None) -> "TextEncoder":
        """Random init from ``cfg``, or ``cfg.pretrained_path`` (a local transformers directory).

        With ``tokenizer`` given, its vocabulary and pad id are checked against the model's.
        """
        pad_id = tokenizer.pad_id if tokenizer is not None else 1
        if cfg.pretrained_path is None:
            config = RobertaConfig(
                vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                max_position_embeddings=cfg.max_length + POSITION_OFFSET, type_vocab_size=1,
                pad_token_id=pad_id, bos_token_id=tokenizer.bos_id if tokenizer else 0,
                eos_token_id=tokenizer.eos_id if tokenizer else 2, attn_implementation="sdpa",
                hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
            model = RobertaModel(config, add_pooling_layer=False)
        else:
            model = RobertaModel.from_pretrained(cfg.pretrained_path, local_files_only=True,
                                                 add_pooling_layer=False, attn_implementation="sdpa")
        config = model.config
        if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"text.vocab_size: the text encoder has {config.vocab_size} embedding rows but the "
                             f"tokenizer has {tokenizer.vocab_size} tokens; raise text.vocab_size")
        if config.pad_token_id != pad_id:
            raise ValueError(f"text.pretrained_path: the model's pad id {config.pad_token_id} differs from the "
                             f"tokenizer's {pad_id}")
        if cfg.max_length + POSITION_OFFSET > config.max_position_embeddings:
            raise ValueError(f"text.max_length: {cfg.max_length} needs {cfg.max_length + POSITION_OFFSET} "
                             f"positions, the model has {config.max_position_embeddings}")
        return cls(model=model, out_width=out_width)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """input_ids: B×L int; attention_mask: B×L (1 = token, 0 = pad) → B×L×out_width.

        causal=True: position i sees only real positions ≤ i (teacher-forced captioning in one pass).
        """
        if causal:
            attention_mask = self._causal_mask(attention_mask, self.model.embeddings.word_embeddings.weight.dtype)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # B×L×H
        return self.proj(hidden)

    def _causal_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """B×L padding mask → B×1×L×L mask in the attention implementation's format.

        transformers passes a 4-D mask through untouched: bool (True = attend) for SDPA, additive
        float for the eager implementation.
        """
        length = attention_mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
        allowed = causal & attention_mask.bool()[:, None, :]  # B×L×L
        # Every query keeps itself, so a padded row is never all-masked (NaN).
        allowed = (allowed | torch.eye(length, dtype=torch.bool, device=attention_mask.device)).unsqueeze(1)
        implementation = self.model.config._attn_implementation
        if implementation == "sdpa":
            return allowed
        if implementation == "eager":
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min)
        raise ValueError(f"causal text encoding supports the sdpa and eager attention, not {implementation!r}")
