"""Image backbone: a timm model with ``features_only=True`` giving multi-scale maps F_1..F_L.

Pretrained weights load through timm's own loader, so every file a user has for the architecture works:
timm's releases (``model.safetensors`` / ``pytorch_model.bin``: the whole classifier), the original releases
(e.g. Microsoft's Swin ``.pth`` with a ``model`` key; the torchvision ResNet files) — timm's checkpoint filter
of the architecture maps them to its own names — and the backbone files ``unip2.persistence.export_backbone``
writes (the feature extractor's own tensor names). Loading is strict: a backbone tensor the file does not
provide fails the build with its name, unless ``pretrained_strict`` is off.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from torch import nn

from unip2.config import BackboneConfig

log = logging.getLogger(__name__)

# timm reports the checkpoint keys its loader could not place on this logger (timm.models._builder).
_TIMM_BUILDER_LOGGER = "timm.models._builder"
_MISSING_KEYS = re.compile(r"^Missing keys \((.*)\) discovered while loading pretrained weights")
_LOADED = re.compile(r"^Loading pretrained weights from")
# Parameters timm's models list in their own no_weight_decay().
_TIMM_NO_DECAY = {"relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token", "dist_token",
                  "reg_token"}


class PartialBackboneWeights(ValueError):
    """A pretrained backbone file leaves some backbone tensors without weights."""


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _timm_load_report():
    """Collect what timm's loader says while building (INFO on its builder logger; silenced for the user)."""
    logger = logging.getLogger(_TIMM_BUILDER_LOGGER)
    records, level, propagate = _Records(), logger.level, logger.propagate
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        logger.propagate = propagate


def _feature_name(key: str, own: set[str]) -> str | None:
    """The feature extractor's name of a full-model tensor name (``layers.1.x`` → ``layers_1.x`` where timm
    flattened a sequential), or None for tensors the extractor drops (classifier head, final norm)."""
    if key in own:
        return key
    flat = re.sub(r"^([^.]+)\.(\d+)\.", r"\1_\2.", key)
    return flat if flat in own else None


def _create(name: str, kwargs: dict, image_size: int):
    """timm model at ``image_size``; fixed-size transformers (Swin, ViT) accept every input size after it."""
    try:
        return timm.create_model(name, img_size=image_size, dynamic_img_size=True, **kwargs)
    except TypeError:  # CNNs take neither argument
        return timm.create_model(name, **kwargs)


class Backbone(nn.Module):
    """Wraps a timm feature extractor; always returns NCHW maps.

    forward: images B×3×H×W (normalized) → list of L maps, map l of shape B×C_l×H/r_l×W/r_l. Any H, W that
    are multiples of the last stride work, whatever size the backbone was built or pretrained at.
    """

    def __init__(self, *, name: str, out_indices: tuple[int, ...], image_size: int, drop_path_rate: float = 0.0,
                 pretrained_path: str | None = None, pretrained_strict: bool = True):
        super().__init__()
        kwargs = dict(features_only=True, out_indices=tuple(out_indices))
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        self.body = _create(name, {**kwargs, "pretrained": False}, image_size)
        if pretrained_path:
            self.body = self._load_pretrained(name, kwargs, image_size, Path(pretrained_path), pretrained_strict)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")

    @classmethod
    def from_config(cls, cfg: BackboneConfig, image_size: int) -> "Backbone":
        return cls(name=cfg.name, out_indices=cfg.out_indices, image_size=image_size,
                   drop_path_rate=cfg.drop_path_rate, pretrained_path=cfg.pretrained_path,
                   pretrained_strict=cfg.pretrained_strict)

    def _load_pretrained(self, name: str, kwargs: dict, image_size: int, path: Path, strict: bool) -> nn.Module:
        """The feature extractor with the file's weights; ``self.body`` (random init) names the tensors expected."""
        if not path.is_file():
            raise FileNotFoundError(f"backbone.pretrained_path: no such file: {path}")
        own = self.body.state_dict()
        exported = _read_exported(path, own)
        if exported is not None:  # the extractor's own names: nothing for timm to map
            self.body.load_state_dict(exported)
            log.info("backbone: loaded %d/%d tensors from %s", len(own), len(own), path)
            return self.body
        with _timm_load_report() as messages:
            try:
                body = _create(name, {**kwargs, "pretrained": True, "pretrained_cfg_overlay": dict(file=str(path))},
                               image_size)
            except RuntimeError as err:  # shapes that do not fit: another architecture's file
                raise ValueError(f"backbone.pretrained_path: {path} does not fit {name}: {err}") from None
        if not any(_LOADED.match(m) for m in messages):
            raise RuntimeError(f"backbone.pretrained_path: timm did not report loading {path}")
        reported = [m for m in messages if _MISSING_KEYS.match(m)]
        missing_keys = _MISSING_KEYS.match(reported[0]).group(1).split(", ") if reported else []
        names = set(own)
        missing = sorted({n for n in (_feature_name(k, names) for k in missing_keys) if n is not None})
        if missing and strict:
            shown = ", ".join(missing[:12]) + (f", … ({len(missing) - 12} more)" if len(missing) > 12 else "")
            raise PartialBackboneWeights(
                f"backbone.pretrained_path: {path} leaves {len(missing)} of {len(own)} {name} tensors unloaded: "
                f"{shown}. A file of another model? Set model.backbone.pretrained_strict=false to load it partially.")
        message = f"backbone: loaded {len(own) - len(missing)}/{len(own)} tensors from {path}"
        if missing:
            print(f"[model] {message} (pretrained_strict off: {len(missing)} keep their random init)", flush=True)
        log.info(message)
        return body

    def no_weight_decay(self) -> set[str]:
        """timm's position parameters (Swin's relative position tables, ViT's position embeddings and class
        tokens): timm's feature wrapper drops the model's own ``no_weight_decay``, so they are named here."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in _TIMM_NO_DECAY}

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(images)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return features


def _read_exported(path: Path, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The file's tensors if it holds exactly the feature extractor's own names and shapes, else None."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if set(handle.keys()) != set(own):
            return None
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    return state if all(state[k].shape == v.shape for k, v in own.items()) else None
