"""Request images → the task's numpy rows, on a small thread pool beside the event loop.

The task's own ``preprocess`` decodes and resizes each image before the request joins its batch queue, so a
batch only stacks ready arrays (3×S×S uint8 per image) on the model thread. Decoding runs on these threads, off
the event loop and off the batch's critical path; PIL and numpy release the GIL for most of it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serve.errors import ApiError
from serve.requests import ImageField
from unip2.config import ModelConfig
from unip2.model.tokenizer import TextTokenizer
from unip2.persistence import TOKENIZER, load_config
from unip2.tasks import TASKS
from unip2.tasks.base import input_options
from unip2.tasks.preprocessing import UndecodableImage

Rows = dict[str, np.ndarray]


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
        config = load_config(checkpoint)  # older checkpoints' layouts upgraded, registered tasks filled in
        tokenizer = TextTokenizer.from_json((Path(checkpoint) / TOKENIZER).read_text())
        return cls(config=config, tokenizer=tokenizer, threads=threads)

    async def __call__(self, task: str, image: bytes, field: str = "image") -> Rows:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run, task, image, field)

    async def rows(self, task: str, image_field: ImageField | None, images: list[bytes]) -> Rows | list[Rows] | None:
        """A request's images → ``ServeRequest.rows``: one row batch (``image``), a list of them (``images``,
        decoded in parallel) or None (a route without images)."""
        if image_field is None:
            return None
        if not image_field.many:
            return await self(task, images[0], image_field.name)
        return list(await asyncio.gather(*(self(task, image, f"{image_field.name}[{index}]")
                                           for index, image in enumerate(images))))

    def run(self, task: str, image: bytes, field: str = "image") -> Rows:
        """One image → ``TASKS[task].preprocess``'s batch of one ({"images": 1×3×S×S uint8, ...}); 400 if
        the image does not decode."""
        try:
            return TASKS[task].preprocess({"image": [image]}, **self.options[task], tokenizer=self.tokenizer,
                                          train=False, rng=np.random.default_rng(0))
        except UndecodableImage as err:
            raise ApiError(400, f"{field}: {err}") from None
