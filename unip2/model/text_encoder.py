"""Text encoder (a transformers RoBERTa- or BERT-family model, built as its own architecture) projected to
the decoder width.

Three ways to build it, all local: random init from ``TextConfig``'s sizes; a user's pretrained
transformers directory (``text.pretrained_path``: a base model or a ``*ForMaskedLM`` checkpoint whose keys
carry the ``roberta.``/``bert.`` prefix), loaded by transformers' own loader with every encoder tensor
required; or the transformers config a saved unip2 model recorded (its weights then come from the
checkpoint). Nothing is ever fetched from a hub: HF_HUB_OFFLINE is set before transformers is imported
and loading is local-files-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel  # noqa: E402

from unip2.config import TextConfig  # noqa: E402
from unip2.model.tokenizer import TextTokenizer  # noqa: E402

# transformers model_type → where position ids start. RoBERTa's family numbers a text's positions from
# pad_id + 1 (positions 0..pad_id are never used); BERT's from 0.
POSITIONS_AFTER_PAD = "after_pad"
POSITIONS_FROM_ZERO = "from_zero"
FAMILIES = {"roberta": POSITIONS_AFTER_PAD, "xlm-roberta": POSITIONS_AFTER_PAD,
            "camembert": POSITIONS_AFTER_PAD, "bert": POSITIONS_FROM_ZERO}
# Missing tensors named in an error, at most (a wrong prefix misses them all).
MAX_NAMES_SHOWN = 10


def first_position(config: PretrainedConfig) -> int:
    """Position id of a text's first token under ``config``'s family."""
    return config.pad_token_id + 1 if FAMILIES[config.model_type] == POSITIONS_AFTER_PAD else 0


def random_config(cfg: TextConfig, tokenizer: TextTokenizer | None) -> PretrainedConfig:
    """The transformers config of a randomly initialized encoder of family ``cfg.architecture``."""
    pad_id = tokenizer.pad_id if tokenizer is not None else (1 if cfg.architecture != "bert" else 0)
    config = AutoConfig.for_model(
        cfg.architecture, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, type_vocab_size=1, pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_id if tokenizer is not None else None,
        eos_token_id=tokenizer.eos_id if tokenizer is not None else None,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, attn_implementation="sdpa")
    config.max_position_embeddings = first_position(config) + cfg.max_length
    return config


@contextlib.contextmanager
def quiet_transformers():
    """transformers reports every load and save (a report of unexpected keys such as a masked-LM head, a
    note on unsharded layers, progress bars); ``load_pretrained`` checks the key lists itself and names what
    matters, so these stay off the console."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_pretrained(path: str | Path) -> PreTrainedModel:
    """A RoBERTa- or BERT-family encoder from a local transformers directory, as its own architecture.

    A ``*ForMaskedLM`` checkpoint works too: transformers drops its ``roberta.``/``bert.`` key prefix and
    its head. Every encoder tensor must be in the files (the pooler is not built, so not needed);
    otherwise the missing ones are named. The weights load as float32 whatever dtype they were saved in.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text.pretrained_path: {path} is not a transformers model directory "
                                "(no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in FAMILIES:
        raise ValueError(f"text.pretrained_path: {path} holds a {config.model_type!r} model; supported: "
                         f"{', '.join(FAMILIES)}")
    with quiet_transformers():
        model, info = AutoModel.from_pretrained(path, config=config, local_files_only=True, add_pooling_layer=False,
                                                attn_implementation="sdpa", dtype=torch.float32,
                                                output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        shown = ", ".join(missing[:MAX_NAMES_SHOWN]) + (f" and {len(missing) - MAX_NAMES_SHOWN} more"
                                                       if len(missing) > MAX_NAMES_SHOWN else "")
        raise ValueError(f"text.pretrained_path: {len(missing)} text encoder tensor(s) missing from {path}: {shown}")
    return model


def model_from_saved_config(config: dict) -> PreTrainedModel:
    """An encoder of the architecture a saved unip2 model recorded (``text_encoder_config.json``), random
    init: its weights follow from the checkpoint."""
    if config.get("model_type") not in FAMILIES:
        raise ValueError(f"text encoder config: model_type {config.get('model_type')!r} is not one of "
                         f"{', '.join(FAMILIES)}")
    transformers_config = AutoConfig.for_model(**{**config, "attn_implementation": "sdpa"})
    return AutoModel.from_config(transformers_config, add_pooling_layer=False, dtype=torch.float32)


class TextEncoder(nn.Module):
    """input_ids, attention_mask: B×L → B×L×out_width (the encoder's hidden states → Linear)."""

    def __init__(self, *, model: PreTrainedModel, out_width: int):
        super().__init__()
        self.model = model
        self.proj = nn.Linear(model.config.hidden_size, out_width)

    @classmethod
    def from_config(cls, cfg: TextConfig, out_width: int, tokenizer: TextTokenizer | None = None, *,
                    saved_config: dict | None = None) -> "TextEncoder":
        """Random init from ``cfg``, ``cfg.pretrained_path`` (a local transformers directory), or
        ``saved_config`` (the transformers config a saved model recorded; it wins over both).

        With ``tokenizer`` given, its vocabulary and special ids are checked against the model's.
        """
        if saved_config is not None:
            model = model_from_saved_config(saved_config)
        elif cfg.pretrained_path is not None:
            model = load_pretrained(cfg.pretrained_path)
        else:
            model = AutoModel.from_config(random_config(cfg, tokenizer), add_pooling_layer=False)
        if tokenizer is not None:
            random_init = saved_config is None and cfg.pretrained_path is None
            source = "text.tokenizer_path" if cfg.tokenizer_path or random_init else "text.pretrained_path"
            check_tokenizer(model.config, tokenizer, vocab_field="text.vocab_size" if random_init else source,
                            ids_field=source)
        positions = first_position(model.config) + cfg.max_length
        if positions > model.config.max_position_embeddings:
            raise ValueError(f"text.max_length: {cfg.max_length} tokens need {positions} position rows "
                             f"({model.config.model_type} numbers positions from {first_position(model.config)}), "
                             f"the model has {model.config.max_position_embeddings}")
        return cls(model=model, out_width=out_width)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def described(self, cfg: TextConfig) -> TextConfig:
        """``cfg`` with the family and sizes of the encoder actually built (a pretrained directory's own)."""
        config = self.model.config
        return dataclasses.replace(cfg, architecture=config.model_type, vocab_size=config.vocab_size,
                                   hidden_size=config.hidden_size, num_layers=config.num_hidden_layers,
                                   num_heads=config.num_attention_heads, intermediate_size=config.intermediate_size)

    def saved_config(self) -> dict:
        """The transformers config that rebuilds this architecture (``model_from_saved_config``)."""
        config = self.model.config.to_dict()
        config.pop("_name_or_path", None)  # the directory it came from: not needed to rebuild
        return config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        """input_ids: B×L int; attention_mask: B×L (1 = token, 0 = pad) → B×L×out_width.

        causal=True: position i sees only real positions ≤ i (teacher-forced captioning in one pass).
        Positions are numbered by the model's own embeddings (RoBERTa's from pad_id + 1, skipping pads;
        BERT's from 0): a text's real tokens come first, so both give its tokens the positions it was
        trained with.
        """
        if causal:
            attention_mask = self._causal_mask(attention_mask, self.model.embeddings.word_embeddings.weight.dtype)
        # An encoder keeps no cache (saying so keeps transformers quiet under activation checkpointing).
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            use_cache=False).last_hidden_state  # B×L×H
        return self.proj(hidden)

    def _causal_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """B×L padding mask → B×1×L×L mask in the attention implementation's format.

        transformers passes a 4-D mask through untouched (RoBERTa and BERT alike): bool (True = attend)
        for SDPA, additive float for the eager implementation.
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


def check_tokenizer(config: PretrainedConfig, tokenizer: TextTokenizer, *, vocab_field: str, ids_field: str) -> None:
    """Refuse a tokenizer whose ids the model cannot take: more tokens than embedding rows, or pad/bos/eos
    ids other than the model config's (a config without bos/eos ids, as BERT's, checks pad only)."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{vocab_field}: the tokenizer has {tokenizer.vocab_size} tokens but the text encoder has "
                         f"{config.vocab_size} embedding rows")
    for role in ("pad", "bos", "eos"):
        model_id, tokenizer_id = getattr(config, f"{role}_token_id", None), getattr(tokenizer, f"{role}_id")
        if (model_id is not None or role == "pad") and model_id != tokenizer_id:
            raise ValueError(f"{ids_field}: the tokenizer's {role} id is {tokenizer_id} but the text encoder's "
                             f"config has {role}_token_id {model_id}")
