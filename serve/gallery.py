"""An image gallery indexed at start-up from a converted data folder (``manifest.json`` + Parquet), for the routes
that rank it when a request brings no images (``Route.uses_gallery``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unip2.data.manifest import read_table
from unip2.tasks import Task
from unip2.tasks.routes import ServeContext


@dataclass(frozen=True, kw_only=True)
class GallerySource:
    """Which converted split to index for ``/v1/retrieve/image`` when a request uploads no images."""

    folder: str
    """A converted data folder (the one holding ``manifest.json``)."""
    dataset: str | None = None
    """The dataset to index; None: the ranking task's own (``Task.dataset``)."""
    split: str = "test"
    limit: int = 5000
    """Most images indexed (the split's first rows)."""


def read_gallery(source: GallerySource, dataset: str) -> tuple[list[int], list[bytes]]:
    """(image ids, encoded images) of the first ``limit`` rows of the split of ``source.dataset``, else of
    ``dataset``."""
    table = read_table(Path(source.folder), source.dataset or dataset, source.split, columns=["image_id", "image"])
    table = table.slice(0, source.limit)
    return [int(i) for i in table.column("image_id").to_pylist()], table.column("image").to_pylist()


@torch.no_grad()
def index_gallery(source: GallerySource, task: Task, model, preprocess, batch_size: int) -> ServeContext:
    """The gallery's images through ``preprocess(task name, image bytes) → rows`` and the task's
    ``gallery_embeddings``, ``batch_size`` images at a time → the context its gallery routes rank."""
    ids, images = read_gallery(source, task.dataset)
    embeddings = [task.gallery_embeddings(model, [preprocess(task.name, image) for image in images[start:start + batch_size]])
                  for start in range(0, len(images), batch_size)]
    return ServeContext(gallery_ids=ids, gallery_embeddings=np.concatenate(embeddings) if embeddings else None)
