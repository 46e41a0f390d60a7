"""Named model presets: ``tiny`` (trains on 2 CPU cores in minutes), ``base`` and ``large`` (the paper's).

BASE and LARGE share the decoder (BERT-base width, 6 layers, 8 experts top-2) and text encoder
(RoBERTa-base shape); only the backbone (Swin-B / Swin-L) and input size change.
"""

from __future__ import annotations

from unip2.config import (BackboneConfig, DecoderConfig, ModelConfig, ProposalConfig, TaskOptions,
                          TextConfig, TokenConfig)
from unip2.config_io import validate


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        image_size=128,
        backbone=BackboneConfig(name="resnet18", out_indices=(2, 3, 4)),
        proposals=ProposalConfig(dim=64, num_heads=4, num_points=4, encoder_layers=1, decoder_layers=2,
                                 ffn_dim=128, num_queries=20, mask_loss_points=0),
        tokens=TokenConfig(num_regional=8, num_attention_pools=2, mask_pool_size=14),
        text=TextConfig(vocab_size=512, hidden_size=128, num_layers=2, num_heads=4,
                        intermediate_size=256, max_length=32),
        decoder=DecoderConfig(width=128, num_layers=2, num_heads=4, ffn_dim=256, num_experts=4, top_k=2),
        tasks=TaskOptions(caption_max_length=24, detection_max_per_image=20),
    )


def _base() -> ModelConfig:
    return ModelConfig(
        preset="base",
        image_size=512,
        backbone=BackboneConfig(name="swin_base_patch4_window7_224", out_indices=(1, 2, 3),
                                drop_path_rate=0.3),
        proposals=ProposalConfig(),
        tokens=TokenConfig(),
        text=TextConfig(),
        decoder=DecoderConfig(),
    )


def _large() -> ModelConfig:
    config = _base()
    config.preset = "large"
    config.backbone = BackboneConfig(name="swin_large_patch4_window7_224", out_indices=(1, 2, 3),
                                     drop_path_rate=0.4)
    return config


PRESETS = {"tiny": _tiny, "base": _base, "large": _large}


def preset(name: str) -> ModelConfig:
    """A fresh, validated ModelConfig for preset ``name`` (``tiny``, ``base`` or ``large``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    validate(config)
    return config
