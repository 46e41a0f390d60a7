"""Request images → the task's one-row numpy batch, in the ingress process (decoding off the event loop).

Decoding and resizing happen here, not in the model replica: there they would hold the GIL against the
model thread and starve batching (measured: 16 concurrent requests formed batches of 1–3). Here they run
in another process, and the replica receives ready arrays (3×S×S uint8 per image) that it only stacks.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serve.errors import ApiError
from unip2 import config_io
from unip2.config import ModelConfig
from unip2.model.tokenizer import TextTokenizer
from unip2.persistence import CONFIG, TOKENIZER
from unip2.tasks import TASKS
from unip2.tasks.base import input_options


class Preprocessor:
    """The tasks' own ``preprocess`` for single served images, with each task's input settings as the
    checkpoint records them (``ModelConfig.task_input_settings``: the image size it was trained at)."""

    def __init__(self, *, config: ModelConfig, tokenizer: TextTokenizer, threads: int = 2):
        self.options = {name: input_options(config.task_input_settings(name)) for name in TASKS}
        self.tokenizer = tokenizer
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, threads: int = 2) -> "Preprocessor":
        """Input settings and tokenizer from a checkpoint folder, without loading the weights."""
        config = config_io.load(ModelConfig, Path(checkpoint) / CONFIG)
        tokenizer = TextTokenizer.from_json((Path(checkpoint) / TOKENIZER).read_text())
        return cls(config=config, tokenizer=tokenizer, threads=threads)

    async def __call__(self, task: str, image: bytes, field: str = "image") -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run, task, image, field)

    def run(self, task: str, image: bytes, field: str = "image") -> dict[str, np.ndarray]:
        """One image → ``TASKS[task].preprocess``'s batch of one ({"images": 1×3×S×S uint8, ...}); 400 if
        the image does not decode."""
        try:
            return TASKS[task].preprocess({"image": [image]}, **self.options[task], tokenizer=self.tokenizer,
                                          train=False, rng=np.random.default_rng(0))
        except ValueError as err:
            raise ApiError(400, f"{field}: {err}") from None
