"""A task's own dataset, one that is not among the built-in sources (``unip2.data.parquet_schema.SCHEMAS``),
converted into a data folder beside the others: the task reads its source format into rows of its schema
(``Task.read_source``, ``Task.dataset_schema``) and this module writes every split as the built-in converters do,
images checked (an undecodable one skipped and counted), the manifest updated.

    python pipelines/prepare_data.py --task-data TASK SOURCE --out DATA_DIR
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from unip2.data.images import check_image
from unip2.data.manifest import FORMAT_VERSION, MANIFEST_FILE, load_manifest, write_manifest
from unip2.data.parquet_writer import ShardedParquetWriter


@dataclass
class SourceRows:
    """What a task read from its source: rows per split (dicts of its schema's columns; ``image`` holds the encoded
    file, ``width`` / ``height`` are filled in here) and the names of its label spaces."""

    splits: dict[str, Iterable[dict]]
    class_names: dict[str, list[str]] = field(default_factory=dict)


def empty_manifest() -> dict:
    return {"format_version": FORMAT_VERSION, "datasets": {}, "class_names": {}, "coco_category_ids": [],
            "skipped": {}, "annotations": {"instances": {}, "captions": {}}, "sources": {}}


def add_task_dataset(out: str | Path, name: str, schema: pa.Schema, source: SourceRows, *,
                     rows_per_shard: int = 1000, overwrite: bool = False) -> dict:
    """Write dataset ``name`` into the data folder ``out`` (created if it holds no manifest yet) → the manifest."""
    out = Path(out)
    manifest = load_manifest(out) if (out / MANIFEST_FILE).is_file() else empty_manifest()
    if name in manifest["datasets"] and not overwrite:
        raise FileExistsError(f"dataset {name!r} is already in {out}; pass --overwrite to replace it")
    clashes = {space for space in source.class_names if manifest["class_names"].get(space) not in
               (None, source.class_names[space])}
    if clashes:
        raise ValueError(f"{out} already names the classes of {sorted(clashes)} differently")
    entry, skipped = {"splits": {}}, {}
    for split, rows in source.splits.items():
        writer = ShardedParquetWriter(folder=out / name / split, schema=schema, rows_per_shard=rows_per_shard)
        reasons: Counter = Counter()
        for row in rows:
            if row.get("image") is not None:
                check = check_image(row["image"])
                if not check.ok:
                    reasons[check.reason] += 1
                    continue
                row = {**row, "width": check.width, "height": check.height}
            writer.write(row)
        shards = writer.close()
        entry["splits"][split] = {"rows": writer.rows, "files": [f"{name}/{split}/{shard}" for shard in shards]}
        skipped[split] = dict(sorted(reasons.items()))
    manifest["datasets"][name] = entry
    manifest["skipped"][name] = skipped
    manifest["class_names"].update(source.class_names)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    return manifest
