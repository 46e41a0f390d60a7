"""The model's configuration: one dataclass per component, one documented field per hyperparameter.

Only ``from_config`` constructors read these. ``unip2.config_io`` loads them from YAML / ``key=value``
overrides and validates them; the config is saved beside the weights so a checkpoint rebuilds the model
on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unip2.config_io import require


@dataclass
class BackboneConfig:
    """Image backbone: any timm model that supports ``features_only=True``."""

    name: str = "resnet10t"
    """timm model name (``swin_base_patch4_window7_224`` in BASE, ``swin_large_patch4_window7_224`` in LARGE)."""
    out_indices: tuple[int, ...] = (2, 3, 4)
    """timm feature levels fed to the region proposal network; the last one is F_L for the global tokens."""
    pretrained_path: str | None = None
    """Local weights file for the backbone, loaded by timm's own loader: timm's ``model.safetensors`` /
    ``pytorch_model.bin``, an original release ``.pth`` (e.g. Swin's, with a ``model`` key; torchvision's ResNet)
    or a file from ``unip2.persistence.export_backbone``; None = random init. Never a hub name."""
    pretrained_strict: bool = True
    """Fail when the file leaves any backbone tensor unloaded (naming them); False loads what fits and prints
    the counts."""
    drop_path_rate: float = 0.0
    """Stochastic depth rate, where the timm model supports it."""

    def validate(self, prefix: str = "") -> None:
        require(len(self.out_indices) >= 1, prefix + "out_indices", "needs at least one level")
        require(0.0 <= self.drop_path_rate < 1.0, prefix + "drop_path_rate", "must be in [0, 1)")


@dataclass
class ProposalConfig:
    """Region proposal network (MaskDINO-like, foreground/background only) and its losses."""

    dim: int = 256
    """Hidden width of the deformable encoder, query decoder and mask features."""
    num_heads: int = 8
    """Attention heads in deformable and query self-attention."""
    num_points: int = 4
    """Sampling points per head and level in multi-scale deformable attention."""
    encoder_layers: int = 6
    """Deformable encoder layers over the multi-scale feature maps."""
    decoder_layers: int = 6
    """Query decoder layers (iterative box refinement; each gives deep-supervision outputs)."""
    ffn_dim: int = 1024
    """Feed-forward width inside encoder and decoder layers."""
    num_queries: int = 300
    """Proposals selected from the encoder output (query selection) and refined by the decoder."""
    dropout: float = 0.0
    """Dropout in encoder and decoder layers."""
    mask_enhanced_anchors: bool = False
    """MaskDINO's mask-enhanced anchor initialization: the decoder's first reference boxes are the tight boxes of
    the selected tokens' predicted masks (the box head's where a mask is empty)."""
    denoising_queries: int = 0
    """Training only: about this many denoising queries per image (DN-DETR / MaskDINO), in groups of noised
    ground-truth boxes that the decoder learns to reconstruct (unip2/model/denoising.py); 0 = none."""
    denoising_box_noise: float = 0.4
    """How far a denoising query's box sides are moved: up to this × half the box's width / height."""
    cost_objectness: float = 2.0
    """Hungarian matching cost weight of the objectness (focal) term."""
    cost_box_l1: float = 5.0
    """Matching cost weight of the L1 box distance (normalized cx, cy, w, h)."""
    cost_giou: float = 2.0
    """Matching cost weight of the generalized IoU."""
    cost_mask: float = 5.0
    """Matching cost weight of the mask BCE."""
    cost_dice: float = 5.0
    """Matching cost weight of the mask dice."""
    weight_objectness: float = 2.0
    """Loss weight of the focal objectness loss."""
    weight_box_l1: float = 5.0
    """Loss weight of the L1 box loss."""
    weight_giou: float = 2.0
    """Loss weight of the GIoU loss."""
    weight_mask: float = 5.0
    """Loss weight of the mask BCE loss."""
    weight_dice: float = 5.0
    """Loss weight of the mask dice loss."""
    focal_alpha: float = 0.25
    """Focal loss alpha for objectness."""
    focal_gamma: float = 2.0
    """Focal loss gamma for objectness."""
    mask_loss_points: int = 12544
    """Points sampled per mask for the mask losses (112×112 as in Mask2Former); 0 = dense masks."""

    def validate(self, prefix: str = "") -> None:
        for name in ("dim", "num_heads", "num_points", "decoder_layers", "ffn_dim", "num_queries"):
            require(getattr(self, name) > 0, prefix + name, "must be > 0")
        require(self.encoder_layers >= 0, prefix + "encoder_layers", "must be >= 0")
        require(self.dim % self.num_heads == 0, prefix + "dim", "must be divisible by num_heads")
        require(0.0 <= self.dropout < 1.0, prefix + "dropout", "must be in [0, 1)")
        require(self.mask_loss_points >= 0, prefix + "mask_loss_points", "must be >= 0")
        require(self.denoising_queries >= 0, prefix + "denoising_queries", "must be >= 0")
        require(0.0 < self.denoising_box_noise <= 1.0, prefix + "denoising_box_noise", "must be in (0, 1]")


@dataclass
class TokenConfig:
    """How images become decoder tokens (paper Eq. 2 and 3)."""

    num_regional: int = 100
    """Top-N proposals by objectness that become regional tokens."""
    num_attention_pools: int = 4
    """M': learned-query attention pools over the last feature map (global tokens)."""
    mask_pool_size: int = 28
    """Mask logits are adaptively pooled to this square size before the mask embedding M."""
    use_global: bool = True
    """Feed global tokens (attention pools + flattened F_L) to the decoder where a task uses them."""
    use_regional: bool = True
    """Feed regional tokens to the decoder where a task uses them."""

    def validate(self, prefix: str = "") -> None:
        require(self.num_regional > 0, prefix + "num_regional", "must be > 0")
        require(self.num_attention_pools > 0, prefix + "num_attention_pools", "must be > 0")
        require(self.mask_pool_size > 0, prefix + "mask_pool_size", "must be > 0")
        require(self.use_global or self.use_regional, prefix + "use_global",
                "at least one of use_global / use_regional must be true")


@dataclass
class TextConfig:
    """Text encoder (a transformers RoBERTa- or BERT-family model) and its tokenizer.

    Random init from the sizes below, or a pretrained transformers directory (``pretrained_path``) whose
    config.json then gives the family and sizes; a saved model records the ones it was built with.
    """

    architecture: Literal["roberta", "bert", "xlm-roberta", "camembert"] = "roberta"
    """Encoder family (transformers ``model_type``) of a randomly initialized encoder: RoBERTa's number
    positions from pad_id + 1, BERT's from 0. A pretrained directory brings its own; a saved model records
    the family it was built with (checkpoints without this field are RoBERTa)."""
    vocab_size: int = 50265
    """Embedding rows of a randomly initialized encoder; must be >= the tokenizer's vocabulary size."""
    hidden_size: int = 768
    """Text encoder width (random init; a pretrained directory brings its own)."""
    num_layers: int = 12
    """Text encoder layers (random init; a pretrained directory brings its own)."""
    num_heads: int = 12
    """Text encoder attention heads (random init; a pretrained directory brings its own)."""
    intermediate_size: int = 3072
    """Text encoder feed-forward width (random init; a pretrained directory brings its own)."""
    max_length: int = 64
    """Longest tokenized text (captions are truncated to it, special tokens included); must fit the
    encoder's position rows."""
    dropout: float = 0.1
    """Dropout of the randomly initialized text encoder (a pretrained one keeps its own)."""
    pretrained_path: str | None = None
    """Local transformers directory of a pretrained RoBERTa- or BERT-family model (e.g. a downloaded
    ``roberta-base``, ``bert-base-uncased`` or MiniLM): a base model or a ``*ForMaskedLM`` checkpoint. Built
    as its own architecture; every encoder tensor must be in it. Its tokenizer comes along unless
    ``tokenizer_path`` names another. None = random init from the fields above."""
    tokenizer_path: str | None = None
    """A ``tokenizers`` JSON file or a transformers directory holding a tokenizer; None = the tokenizer of
    ``pretrained_path``, or without one the byte-level BPE tokenizer shipped with unip2."""

    def validate(self, prefix: str = "") -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            require(getattr(self, name) > 0, prefix + name, "must be > 0")
        require(self.max_length >= 4, prefix + "max_length", "must be >= 4")
        require(0.0 <= self.dropout < 1.0, prefix + "dropout", "must be in [0, 1)")
        require(self.hidden_size % self.num_heads == 0, prefix + "hidden_size",
                "must be divisible by num_heads")


@dataclass
class DecoderConfig:
    """The shared task-agnostic Transformer g with conditional MoE and cosine scoring."""

    width: int = 768
    """Decoder width (BERT-base in BASE and LARGE)."""
    num_layers: int = 6
    """Pre-LN Transformer layers."""
    num_heads: int = 12
    """Self-attention heads."""
    ffn_dim: int = 3072
    """Feed-forward width of each expert."""
    num_experts: int = 8
    """Experts per FFN (conditional MoE routed by token attributes); 1 = a plain FFN."""
    top_k: int = 2
    """Experts merged per attribute vector."""
    use_moe: bool = True
    """Route FFNs through attribute-gated experts; False = one dense FFN (ablation)."""
    dropout: float = 0.0
    """Dropout in attention and FFN."""
    temperature_init: float = 0.07
    """Initial softmax temperature τ of cosine scores, one learnable τ per task family."""
    logit_scale_max: float = 100.0
    """Upper bound of 1/τ."""

    def validate(self, prefix: str = "") -> None:
        for name in ("width", "num_layers", "num_heads", "ffn_dim", "num_experts"):
            require(getattr(self, name) > 0, prefix + name, "must be > 0")
        require(self.width % self.num_heads == 0, prefix + "width", "must be divisible by num_heads")
        require(1 <= self.top_k <= self.num_experts, prefix + "top_k", "must be in [1, num_experts]")
        require(self.temperature_init > 0, prefix + "temperature_init", "must be > 0")
        require(self.logit_scale_max > 1, prefix + "logit_scale_max", "must be > 1")


@dataclass
class TaskOptions:
    """What a model records about one task (saved with it): how the task's inputs are prepared. Each task's
    file extends it with the task's own loss weights and inference defaults (``Task.Options``), and
    ``ModelConfig.tasks`` holds one per registered task."""

    image_size: int | None = None
    """Square input side of this task's images; None = ``ModelConfig.image_size``. The training run's value is
    recorded with the model, so evaluation and serving prepare images the same way."""
    max_text_length: int | None = None
    """Longest tokenized text of this task, special tokens included; None = ``text.max_length``."""

    def validate(self, prefix: str = "") -> None:
        require(self.image_size is None or (self.image_size >= 32 and self.image_size % 32 == 0),
                prefix + "image_size", "must be a multiple of 32, >= 32")
        require(self.max_text_length is None or self.max_text_length >= 4, prefix + "max_text_length",
                "must be >= 4")


# ImageNet statistics; the embedded data uses them too so a user's pretrained backbone just works.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TaskInputs:
    """The resolved input settings of one task of a model (``ModelConfig.task_input_settings``)."""

    image_size: int
    """Square side S the task's images are resized / letterboxed to (B×3×S×S)."""
    max_text_length: int
    """Tokens per text, special tokens included."""
    pixel_mean: tuple[float, float, float]
    """Per-channel mean the model subtracts from [0, 1] RGB pixels."""
    pixel_std: tuple[float, float, float]
    """Per-channel standard deviation the model divides by."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a unip2 model (saved as ``config.json`` beside the weights)."""

    preset: str = "custom"
    """Name of the preset this config started from (informational)."""
    image_size: int = 224
    """Default square input size (images are resized/padded to it by the task preprocessors)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    tokens: TokenConfig = field(default_factory=TokenConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    tasks: dict[str, TaskOptions] = field(default_factory=dict)
    """Per task name (a ``unip2.tasks.TASKS`` key), the task's options (``Task.Options``): input settings the
    training run recorded (``image_size``, ``max_text_length``), loss weights, inference defaults. The registry
    fills in every registered task's (``unip2.tasks.with_registered_tasks``: presets, run configs and saved
    models all go through it) and checks the names. Read a task's with ``task_options``; its input settings with
    ``task_input_settings``."""
    score_families: tuple[str, ...] = ()
    """The candidate families the scorer keeps one learnable temperature for, in order (``logit_scale`` has one
    entry per family). Written when the config is made from the registry and saved with the weights, so a
    checkpoint's meaning does not depend on which tasks are registered when it is loaded."""
    class_names: dict[str, list[str]] = field(default_factory=dict)
    """Default candidate names per label space (``"imagenet"``, ``"coco"``), from the data manifest."""
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted from [0, 1] RGB pixels inside the model (match a pretrained backbone's)."""
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation the mean-subtracted pixels are divided by."""
    candidate_chunk_tokens: int = 2048
    """Candidate sets (class names, vocabulary tokens) go through the text encoder and g in chunks of at most this
    many text tokens (rows × the set's padded text length, at least one row), in training and at inference. A set
    of more than one chunk is checkpointed per chunk in training (recomputed in backward, exact gradients), so a
    step keeps the K×D candidate embeddings and one chunk's activations, not all K candidates'; a set within one
    chunk runs as one batch, as before. Only memory and speed depend on it, never the results. With BASE's text
    encoder and decoder a token's activations take ~1.5 MB in fp32, so the default's ~3 GB suits a 24 GB CPU host
    and leaves an 80 GB GPU's matmuls 2,048 rows tall (docs/benchmarks.md, "Step memory")."""

    def validate(self, prefix: str = "") -> None:
        require(self.image_size >= 32, prefix + "image_size", "must be >= 32")
        require(self.image_size % 32 == 0, prefix + "image_size", "must be a multiple of 32")
        require(self.candidate_chunk_tokens > 0, prefix + "candidate_chunk_tokens", "must be > 0")
        require(len(self.pixel_mean) == 3, prefix + "pixel_mean", "needs 3 values (R, G, B)")
        require(len(self.pixel_std) == 3 and all(s > 0 for s in self.pixel_std), prefix + "pixel_std",
                "needs 3 values (R, G, B), each > 0")
        require(len(self.score_families) > 0 and len(set(self.score_families)) == len(self.score_families),
                prefix + "score_families", "must name at least one family, each once")
        for name, options in self.tasks.items():  # which names and classes are valid: the registry's to say
            require(isinstance(options, TaskOptions), f"{prefix}tasks.{name}", "must be a task's options")
            options.validate(f"{prefix}tasks.{name}.")
        for space, names in self.class_names.items():
            require(len(names) > 0, f"{prefix}class_names.{space}", "must not be empty")
            require(len(set(names)) == len(names), f"{prefix}class_names.{space}", "names must be unique")

    def task_options(self, task: str) -> TaskOptions:
        """The options of task ``task`` (every registered task has them, see ``tasks``)."""
        if task not in self.tasks:
            raise KeyError(f"{task!r} is not a task of this model config; its tasks: {', '.join(self.tasks)}")
        return self.tasks[task]

    def task_input_settings(self, task: str) -> TaskInputs:
        """How to prepare inputs of ``task`` for this model: what the training run recorded for it, else
        the model-wide defaults (``image_size``, ``text.max_length``). An unregistered task is refused."""
        options = self.task_options(task)
        return TaskInputs(image_size=options.image_size or self.image_size,
                          max_text_length=options.max_text_length or self.text.max_length,
                          pixel_mean=tuple(self.pixel_mean), pixel_std=tuple(self.pixel_std))
