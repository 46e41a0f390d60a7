"""The generalist model: image encoder + text encoder + one shared decoder g that scores candidates.

Every task builds a token sequence from the encoders' outputs, runs it through g, and scores the
result against candidate representations with ``score`` (cosine / τ per task family). The tasks in
``unip2.tasks`` hold the task-specific glue; this module holds only the shared parts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from unip2.config import ModelConfig
from unip2.model.backbone import Backbone
from unip2.model.checkpointing import checkpointed, layer_checkpointing_paused
from unip2.model.decoder import UnifiedDecoder
from unip2.model.image_tokens import GlobalTokens, RegionalTokens
from unip2.model.moe import TokenLayout
from unip2.model.proposals import RegionProposalNetwork
from unip2.model.similarity import CosineScorer
from unip2.model.text_encoder import TextEncoder
from unip2.model.tokenizer import TextTokenizer, tokenizer_for



@dataclass
class ImageEncoding:
    """What the image encoder gives every task.

    proposals: the RPN's output dict (``query_features`` B×Q×C, ``boxes`` B×Q×4, ``objectness`` B×Q,
        ``masks`` B×Q×Hm×Wm, ``aux_outputs``, ``enc_outputs``).
    regional: B×Q×D regional tokens of every proposal.
    top_index: B×N indices of the N most object-like proposals (the regional tokens given to
        image-level tasks).
    global_tokens: B×G×D, or None when the config turns global tokens off.
    """

    proposals: dict
    regional: torch.Tensor
    top_index: torch.Tensor
    global_tokens: torch.Tensor | None


class UniPerceiverV2(nn.Module):
    """Shared encoders, decoder and scorer of Uni-Perceiver v2."""

    def __init__(self, *, config: ModelConfig, tokenizer: TextTokenizer, text_encoder_config: dict | None = None):
        """``text_encoder_config``: the transformers config a saved model recorded (``unip2.load`` passes
        it); it builds the text encoder's architecture instead of ``config.text``'s sizes or directory."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        width = config.decoder.width
        self.backbone = Backbone.from_config(config.backbone, config.image_size)
        self.proposals = RegionProposalNetwork.from_config(config.proposals, self.backbone.channels)
        self.regional_tokens = RegionalTokens(in_dim=config.proposals.dim, width=width,
                                              mask_pool_size=config.tokens.mask_pool_size)
        self.global_tokens = GlobalTokens(in_channels=self.backbone.channels[-1], width=width,
                                          num_pools=config.tokens.num_attention_pools,
                                          num_heads=config.decoder.num_heads)
        self.text_encoder = TextEncoder.from_config(config.text, width, tokenizer, saved_config=text_encoder_config)
        # Which stream a token came from; the MoE gate sees it too, through the attributes.
        self.token_type = nn.Embedding(3, width)  # 0 regional, 1 global, 2 text
        nn.init.normal_(self.token_type.weight, std=0.02)  # N(0, 1) would drown the features it tags
        self.decoder = UnifiedDecoder.from_config(config.decoder)
        self.scorer = CosineScorer.from_config(config.decoder, config.score_families)
        # Pixel normalization is part of the config (saved with the weights), not of each preprocessor.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config: ModelConfig, tokenizer: TextTokenizer | None = None, *,
                    text_encoder_config: dict | None = None) -> "UniPerceiverV2":
        """The tokenizer defaults to the text config's (``tokenizer_for``)."""
        return cls(config=config, tokenizer=tokenizer or tokenizer_for(config.text),
                   text_encoder_config=text_encoder_config)

    # ----------------------------------------------------------------------------------- encoders
    def encode_image(self, images: torch.Tensor, *, need_global: bool = True,
                     targets: list[dict] | None = None, layer_masks: bool = False) -> ImageEncoding:
        """images: B×3×S×S uint8 or float in [0, 1], S divisible by 32; targets (detection training): per image
        {"boxes": N×4 normalized cxcywh}, which the proposal network's denoising queries start from.
        layer_masks: the proposals' masks at every decoder layer (only the mask losses read them); otherwise
        the last layer's alone, which the regional tokens embed."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B×3×H×W, got {tuple(images.shape)}")
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {tuple(images.shape[-2:])}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        images = (images - self.pixel_mean) / self.pixel_std
        features = self.backbone(images)
        proposals = self.proposals(features, targets, layer_masks=layer_masks)
        regional = self.regional_tokens(proposals["query_features"], proposals["boxes"], proposals["masks"])
        regional = regional + self.token_type.weight[0]
        count = min(self.config.tokens.num_regional, regional.shape[1])
        top_index = proposals["objectness"].detach().topk(count, dim=1).indices  # B×N
        global_tokens = None
        if need_global and self.config.tokens.use_global:
            global_tokens = self.global_tokens(features[-1]) + self.token_type.weight[1]
        return ImageEncoding(proposals, regional, top_index, global_tokens)

    def image_sequence(self, encoding: ImageEncoding, **task_flags: bool) -> tuple[torch.Tensor, TokenLayout]:
        """Tokens of an image for image-level tasks → (B×T×D tokens, their TokenLayout).

        Top-N regional tokens and/or global tokens, as the config allows; ``task_flags`` are the
        task-level attributes (e.g. ``input_image=True, target_text=True``).
        """
        parts, layout = [], TokenLayout()
        if self.config.tokens.use_regional:
            top = torch.gather(encoding.regional, 1,
                               encoding.top_index.unsqueeze(-1).expand(-1, -1, encoding.regional.shape[-1]))
            parts.append(top)
            layout += self.attributes(top, token_image=True, token_regional=True, **task_flags)
        if encoding.global_tokens is not None:
            parts.append(encoding.global_tokens)
            layout += self.attributes(encoding.global_tokens, token_image=True, token_global=True, **task_flags)
        return torch.cat(parts, dim=1), layout

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    causal: bool = False) -> torch.Tensor:
        """input_ids, attention_mask: B×L → B×L×D text tokens for the decoder."""
        return self.text_encoder(input_ids, attention_mask, causal=causal) + self.token_type.weight[2]

    # ------------------------------------------------------------------------------ shared decoder
    def attributes(self, tokens: torch.Tensor, **flags: bool) -> TokenLayout:
        """Every token of B×T×D ``tokens`` carries ``flags``: their TokenLayout (join parts' layouts with +)."""
        return TokenLayout.of(tokens.shape[1], **flags)

    def decode(self, tokens: torch.Tensor, attributes: TokenLayout, *,
               padding_mask: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> dict:
        """The shared decoder g → ``{"spe": B×D, "tokens": B×T×D}``; <SPE> carries the first token's attributes."""
        return self.decoder(tokens, attributes, padding_mask=padding_mask, attention_mask=attention_mask,
                            spe_attributes=attributes.first())

    # ------------------------------------------------------------------- candidate cache (inference)
    def constant(self, key: str, compute) -> torch.Tensor:
        """A tensor a task derives once from this model's config (e.g. captioning's candidate token ids), kept
        on the model's device."""
        constants = self.__dict__.setdefault("_constants", {})
        device = self.pixel_mean.device
        if key not in constants or constants[key].device != device:
            constants[key] = compute().to(device)
        return constants[key]

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        """Candidate encodings are fixed at inference: compute once per (candidates, flags), reuse.

        Only in eval mode without autograd; ``train()`` and ``load_state_dict`` clear the cache.
        """
        if self.training or torch.is_grad_enabled():
            return compute()
        cache = self.__dict__.setdefault("_candidate_cache", {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def train(self, mode: bool = True) -> "UniPerceiverV2":
        self.__dict__.pop("_candidate_cache", None)
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.__dict__.pop("_candidate_cache", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode_texts(self, texts: list[str], **task_flags: bool) -> torch.Tensor:
        """Whole sentences or names → their <SPE> representations (len(texts)×D); cached at inference."""
        key = ("texts", tuple(texts), tuple(sorted(task_flags.items())))
        return self._cached(key, lambda: self._encode_texts(texts, **task_flags))

    def _encode_texts(self, texts: list[str], **task_flags: bool) -> torch.Tensor:
        device = self.pixel_mean.device
        ids, mask = self.tokenizer.encode_batch(texts, self.config.text.max_length)
        ids = torch.as_tensor(ids, device=device)
        mask = torch.as_tensor(mask, device=device)
        return self._encode_candidates(ids, mask, padded=True, task_flags=task_flags)

    def encode_vocabulary(self, ids: torch.Tensor, **task_flags: bool) -> torch.Tensor:
        """Candidate tokens ``ids`` (K, e.g. the whole vocabulary, or the training captions' tokens), each as its
        own one-token text → K×D candidates; cached at inference."""
        key = ("vocabulary", ids.data_ptr(), ids.shape[0], tuple(sorted(task_flags.items())))  # ids: a constant
        return self._cached(key, lambda: self._encode_vocabulary(ids, **task_flags))

    def _encode_vocabulary(self, ids: torch.Tensor, **task_flags: bool) -> torch.Tensor:
        ids = ids.to(self.pixel_mean.device).unsqueeze(1)  # K×1
        return self._encode_candidates(ids, torch.ones_like(ids), padded=False, task_flags=task_flags)

    def _encode_candidates(self, ids: torch.Tensor, mask: torch.Tensor, *, padded: bool,
                           task_flags: dict) -> torch.Tensor:
        """K×L candidate texts (ids, mask; ``padded``: the mask has zeros) → K×D <SPE> outputs.

        In chunks of ``config.candidate_chunk_tokens`` text tokens. With several chunks and autograd on, each
        chunk is checkpointed (non-reentrant: exact gradients, dropout replayed), so what stays for backward is
        the K×D outputs and the chunks' inputs; backward recomputes one chunk at a time.
        """
        rows = max(1, self.config.candidate_chunk_tokens // ids.shape[1])
        if ids.shape[0] <= rows:  # one chunk: as one batch, the stacks' own checkpointing (if on) applies
            return self._encode_chunk(ids, mask, padded, task_flags, False)
        chunks = [checkpointed(self._encode_chunk, ids[start:start + rows], mask[start:start + rows], padded,
                               task_flags, True)
                  for start in range(0, ids.shape[0], rows)]
        return torch.cat(chunks)  # K×D

    def _encode_chunk(self, ids: torch.Tensor, mask: torch.Tensor, padded: bool, task_flags: dict,
                      whole: bool) -> torch.Tensor:
        """C×L texts → C×D; ``whole``: the chunk is checkpointed as a whole, so its layers are not again."""
        with layer_checkpointing_paused(self.text_encoder, self.decoder) if whole else contextlib.nullcontext():
            tokens = self.encode_text(ids, mask)  # C×L×D
            attributes = self.attributes(tokens, token_text=True, **task_flags)
            return self.decode(tokens, attributes, padding_mask=(mask == 0) if padded else None)["spe"]

    def score(self, queries: torch.Tensor, candidates: torch.Tensor, family: str) -> torch.Tensor:
        """cos(queries, candidates) / τ_family: ...×D, M×D → ...×M."""
        return self.scorer(queries, candidates, family)
