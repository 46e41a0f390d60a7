"""Image backbone: a timm model with ``features_only=True`` giving multi-scale maps F_1..F_L."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from unip2.config import BackboneConfig

log = logging.getLogger(__name__)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local ``.safetensors`` or torch weights file without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.pretrained_path: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


class Backbone(nn.Module):
    """Wraps a timm feature extractor; always returns NCHW maps.

    forward: images B×3×H×W (normalized) → list of L maps, map l of shape B×C_l×H/r_l×W/r_l.
    """

    def __init__(self, *, name: str, out_indices: tuple[int, ...], image_size: int,
                 drop_path_rate: float = 0.0, pretrained_path: str | None = None):
        super().__init__()
        kwargs = dict(features_only=True, out_indices=tuple(out_indices), pretrained=False)
        if drop_path_rate > 0:
            kwargs["drop_path_rate"] = drop_path_rate
        try:  # Transformers (Swin, ViT) are built for a fixed input size; CNNs take no img_size.
            self.body = timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError:
            self.body = timm.create_model(name, **kwargs)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.strides: list[int] = list(self.body.feature_info.reduction())
        self.channels_last_output = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        if pretrained_path:
            self._load_pretrained(pretrained_path)

    @classmethod
    def from_config(cls, cfg: BackboneConfig, image_size: int) -> "Backbone":
        return cls(name=cfg.name, out_indices=cfg.out_indices, image_size=image_size,
                   drop_path_rate=cfg.drop_path_rate, pretrained_path=cfg.pretrained_path)

    def _load_pretrained(self, path: str) -> None:
        state = load_weights_file(path)
        own = self.body.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"backbone.pretrained_path: no tensor in {path} matches backbone "
                             f"{type(self.body).__name__} (wrong model name?)")
        self.body.load_state_dict(usable, strict=False)
        log.info("backbone: loaded %d/%d tensors from %s", len(usable), len(own), path)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(images)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return features
