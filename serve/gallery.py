"""An image gallery indexed at start-up from a converted data folder (``manifest.json`` + Parquet)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unip2.data.manifest import read_table


@dataclass(frozen=True, kw_only=True)
class GallerySource:
    """Which converted split to index for ``/v1/retrieve/image`` when a request uploads no images."""

    folder: str
    """A converted data folder (the one holding ``manifest.json``)."""
    dataset: str = "coco_captions"
    split: str = "test"
    limit: int = 5000
    """Most images indexed (the split's first rows)."""


def read_gallery(source: GallerySource) -> tuple[list[int], list[bytes]]:
    """(image ids, encoded images) of the first ``limit`` rows of the split."""
    table = read_table(Path(source.folder), source.dataset, source.split, columns=["image_id", "image"])
    table = table.slice(0, source.limit)
    return [int(i) for i in table.column("image_id").to_pylist()], table.column("image").to_pylist()
