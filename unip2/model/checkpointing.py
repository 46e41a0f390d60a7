"""Activation checkpointing: keep a stack's block inputs in the forward pass, recompute the blocks in backward.

``enable_activation_checkpointing(model)`` (``train.activation_checkpointing``) turns it on for the three big
stacks of a ``UniPerceiverV2``, each through its owner's own switch: the timm backbone's (every block of a
transformer's stages, e.g. Swin's; every stage of a CNN), the transformers text encoder's (every layer) and the
decoder's (every layer). Only training with autograd recomputes; inference runs as before. Always PyTorch's
non-reentrant checkpoint: exact gradients, the dropout masks of the first pass replayed (the RNG state is
restored), and the parameters stay in the autograd graph, so DDP with ``find_unused_parameters`` sees them.

Candidate sets (class names, vocabulary tokens) are checkpointed per chunk by the model itself
(``UniPerceiverV2.encode_vocabulary``), whatever this switch says; inside such a chunk the per-layer
checkpoints are paused (``layer_checkpointing_paused``), since the chunk is recomputed as a whole anyway.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# The per-layer switches: transformers' layers read ``gradient_checkpointing``, unip2's decoder
# ``checkpoint_layers``.
_LAYER_SWITCHES = ("gradient_checkpointing", "checkpoint_layers")


def checkpointed(function: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``function(*args)``, its activations recomputed in backward (non-reentrant) when autograd records."""
    if not torch.is_grad_enabled():
        return function(*args)
    return checkpoint(function, *args, use_reentrant=False)


def enable_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Checkpoint the blocks of ``model``'s backbone, text encoder and decoder (a ``UniPerceiverV2``), in place.

    Backbone: timm's grad-checkpointing flags. Where the feature extractor's stages carry their own flag
    (Swin, ConvNeXt, ViT-like models) every block is checkpointed; otherwise (ResNets) timm's feature
    wrapper checkpoints each stage. Text encoder: transformers' ``activation_checkpointing_enable`` with
    ``use_reentrant=False``. Decoder: each layer (``UnifiedDecoder.checkpoint_layers``).

    A BatchNorm backbone (the tiny preset's ResNet) sees each checkpointed batch twice in training mode, so its
    running statistics take two momentum updates per step from the same batch; gradients are unaffected, and
    Swin (BASE, LARGE) has no BatchNorm.
    """
    body = model.backbone.body
    stages = [m for m in body.modules() if m is not body and hasattr(m, "grad_checkpointing")]
    for module in stages or [body]:  # blocks inside stages, or the wrapper's stages: never both (no nesting)
        module.grad_checkpointing = True
    text = model.text_encoder.model
    text.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # transformers also hooks the embeddings to make their output require grad (for frozen embeddings
    # under reentrant checkpointing); ours train and are non-reentrant, and the hook breaks inference mode.
    text.disable_input_require_grads()
    model.decoder.checkpoint_layers = True
    return model


@contextlib.contextmanager
def layer_checkpointing_paused(*modules: nn.Module) -> Iterator[None]:
    """Per-layer checkpointing off inside ``modules`` for the block, restored after.

    For a region that is itself checkpointed as a whole: entered inside the checkpointed function, it holds
    in the first pass and in the recomputation alike, so each layer runs twice, not three times.
    """
    switched = [(module, name) for root in modules for module in root.modules() for name in _LAYER_SWITCHES
                if getattr(module, name, False) is True]
    for module, name in switched:
        setattr(module, name, False)
    try:
        yield
    finally:
        for module, name in switched:
            setattr(module, name, True)
