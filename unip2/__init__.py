"""unip2: Uni-Perceiver v2, one generalist model for vision and vision-language tasks (pure PyTorch).

    import unip2
    config = unip2.preset("tiny")
    model = unip2.build_model(config)
    unip2.save(model, "ckpt/")
    model = unip2.load("ckpt/")
    model.predict("image.jpg", task="classification", top_k=3)   # exactly what Serve's /v1/classify returns

The task registry is ``unip2.tasks.TASKS``. This package never imports Ray.
"""

from __future__ import annotations

from unip2.config import ModelConfig

__all__ = ["ModelConfig", "build_model", "load", "preset", "save"]

# The functions below import the model on first use: ``import unip2.data`` (data actors, the Serve proxy) stays
# free of torch's model stack.


def preset(name: str) -> ModelConfig:
    """A fresh, validated ModelConfig for preset ``name`` (see ``unip2.presets.preset``)."""
    from unip2.presets import preset as _preset

    return _preset(name)


def build_model(config: ModelConfig, tokenizer=None):
    """Build a UniPerceiverV2 from a ModelConfig (see ``unip2.persistence.build_model``)."""
    from unip2.persistence import build_model as _build

    return _build(config, tokenizer)


def save(model, directory):
    """Save a model as a directory: safetensors weights, config.json, tokenizer.json, text_encoder_config.json."""
    from unip2.persistence import save as _save

    return _save(model, directory)


def load(directory, *, device="cpu"):
    """Rebuild a model saved by ``save``."""
    from unip2.persistence import load as _load

    return _load(directory, device=device)
