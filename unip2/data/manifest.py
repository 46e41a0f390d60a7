"""``manifest.json`` of a converted data folder, and reading its Parquet shards back with pyarrow.

    {"format_version": 1,
     "datasets": {name: {"splits": {split: {"rows": int, "files": ["<name>/<split>/part-00000.parquet", ...]}}}},
     "class_names": {"imagenet": [...], "coco": [...]},
     "coco_category_ids": [...],                   # COCO id of each class_names["coco"] entry
     "skipped": {name: {split: {reason: count}}},  # images and annotations left out, by reason
     "annotations": {"instances": {split: abs path}, "captions": {split: abs path}},  # source COCO json,
                                                   # split "train"/"val" = the *2017.json files
     "sources": {"coco": abs path, "imagenet": ..., "karpathy": ..., "flickr30k": {"annotations", "images"},
                 "web_pairs": [shard folder, URI or pattern, ...]}}   # one key per web-pairs dataset

File paths in ``datasets`` are relative to the folder holding the manifest, or absolute: a path, or a URI
(``s3://...``) that pyarrow opens (web pairs written elsewhere, see ``pipelines/data/web_pairs.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST_FILE
    partial = path.with_name(f".{MANIFEST_FILE}.partial-{os.getpid()}")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    partial.replace(path)  # atomic: a reader sees the old manifest or the new one, never half of one
    return path


def train_rows(manifest: dict, datasets: list[str]) -> int:
    """Training rows of ``datasets`` together (one row space, see ``RunConfig.train_datasets``)."""
    return sum(int(manifest["datasets"].get(name, {}).get("splits", {}).get("train", {}).get("rows", 0))
               for name in datasets)


def load_manifest(folder: str | Path) -> dict:
    """The manifest of a converted folder; refuses a folder without one, or of another format version."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {Path(folder).resolve()}: not a converted data folder "
                                "(run pipelines/prepare_data.py)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
    return manifest


def split_files(folder: str | Path, dataset: str, split: str) -> list[Path | str]:
    """Absolute paths of one split's shards, in order (a URI entry as is: pyarrow's readers open both)."""
    manifest = load_manifest(folder)
    datasets = manifest["datasets"]
    if dataset not in datasets:
        raise KeyError(f"dataset {dataset!r} not in {Path(folder) / MANIFEST_FILE}; present: {sorted(datasets)}")
    splits = datasets[dataset]["splits"]
    if split not in splits:
        raise KeyError(f"split {split!r} of {dataset!r} not in the manifest; present: {sorted(splits)}")
    return [name if "://" in name else Path(folder).resolve() / name for name in splits[split]["files"]]


def read_table(folder: str | Path, dataset: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """One split as a single Arrow table (rows in shard order)."""
    tables = [pq.read_table(path, columns=columns) for path in split_files(folder, dataset, split)]
    return pa.concat_tables(tables)


def read_rows(folder: str | Path, dataset: str, split: str, columns: list[str] | None = None) -> list[dict]:
    """One split as a list of row dicts (for tests and tooling; Ray Data reads the shards directly)."""
    return read_table(folder, dataset, split, columns).to_pylist()
