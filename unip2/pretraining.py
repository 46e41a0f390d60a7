"""Stage 1: the encoders pretrained alone, each on its own objective, and written as users download them.

The image encoder is the backbone's timm architecture as a whole classifier (``timm.create_model(name,
num_classes=K)``) trained with cross-entropy on the classification task's batches; it is written as timm's
release files are (``model.safetensors`` with the classifier's own tensor names, and ``config.json``), so
``model.backbone.pretrained_path`` loads it through timm's loader like any downloaded weights. The text encoder
is a transformers ``*ForMaskedLM`` of the configured family trained with RoBERTa's objective on the
language-modelling task's masked batches; it is written by ``save_pretrained`` with its tokenizer, a directory
``model.text.pretrained_path`` takes. Which task trains which encoder, and its loss, is the task's to say
(``Task.pretrains``, ``Task.pretrain_loss``).

    model = EncoderPretraining(model_config, tokenizer, num_classes=12)
    loss, right, count = model(task_name, batch)   # a task whose ``pretrains`` is one of model.encoders
    model.save_image_encoder(folder / "image"); model.save_text_encoder(folder / "text", tokenizer)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModelForMaskedLM  # noqa: E402

from unip2.config import ModelConfig  # noqa: E402
from unip2.model.text_encoder import quiet_transformers, random_config  # noqa: E402
from unip2.model.tokenizer import TextTokenizer  # noqa: E402
from unip2.tasks import TASKS  # noqa: E402

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class EncoderPretraining(nn.Module):
    """The image classifier and the masked language model of stage 1 (either may be absent).

    forward(task, collated batch) → the task's ``pretrain_loss``: (mean loss, number of right predictions, number of
    predictions), the counts as 0-d tensors, so that a training loop reads them (a wait for the device) only when
    it logs.
    """

    def __init__(self, config: ModelConfig, tokenizer: TextTokenizer, *, num_classes: int,
                 encoders: tuple[str, ...] = ("image", "text"), label_smoothing: float = 0.1,
                 class_names: list[str] | None = None):
        super().__init__()
        self.encoders, self.label_smoothing, self.class_names = tuple(encoders), label_smoothing, class_names
        self.backbone_name = config.backbone.name
        self.image = self.text = None
        if "image" in self.encoders:
            self.image = timm.create_model(config.backbone.name, pretrained=False, num_classes=num_classes,
                                           drop_path_rate=config.backbone.drop_path_rate)
        if "text" in self.encoders:
            self.text = AutoModelForMaskedLM.from_config(random_config(config.text, tokenizer))
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def encoder(self, name: str) -> nn.Module:
        """The ``image`` classifier or the ``text`` masked language model."""
        module = getattr(self, name, None) if name in ("image", "text") else None
        if module is None:
            raise ValueError(f"the {name} encoder is not pretrained in this stage (encoders: {self.encoders})")
        return module

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B×3×S×S → B×K logits."""
        return self.encoder("image")((images.float() / 255.0 - self.pixel_mean) / self.pixel_std)

    def forward(self, task: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return TASKS[task].pretrain_loss(self, batch)  # a missing encoder is refused by ``encoder``

    # ------------------------------------------------------------------------------- outputs
    def save_image_encoder(self, folder: str | Path) -> Path:
        """timm's release layout: ``model.safetensors`` (the whole classifier) and ``config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.encoder("image")
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
        config = {"architecture": self.backbone_name, "num_classes": model.num_classes,
                  "label_names": self.class_names,
                  "pretrained_cfg": {"mean": self.pixel_mean.flatten().tolist(),
                                     "std": self.pixel_std.flatten().tolist(), "classifier": "fc"}}
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        return folder / WEIGHTS

    def save_text_encoder(self, folder: str | Path, tokenizer: TextTokenizer) -> Path:
        """transformers' layout: ``save_pretrained`` of the masked LM and of its tokenizer."""
        folder = Path(folder)
        with quiet_transformers():
            self.encoder("text").save_pretrained(folder)
            tokenizer.save_transformers(folder)
        return folder

