"""Web image-text pairs (img2dataset WebDataset shards) → a ``web_pairs`` dataset of a converted data folder.

    python pipelines/prepare_data.py --web-pairs /datasets/cc3m --out /datasets/unip2-parquet
    python pipelines/prepare_data.py --web-pairs 's3://bucket/laion/{00000..00127}.tar' \\
        --web-pairs-out s3://bucket/unip2/web_pairs --out /datasets/unip2-parquet
    # then train on both: tasks.captioning.datasets=[coco_captions,web_pairs]

Design. Training reads rows by index (``unip2.sampling.TrainingPlan`` names row ids as a pure function of
(seed, step, worker); ``unip2.data.row_reader`` fetches them), which is what makes resume exact. A tar
stream has no index, so web pairs are converted once, like COCO, into Parquet of the ``coco_captions``
columns, recorded in the data folder's ``manifest.json`` as one more dataset with a ``train`` split. A task
then trains on several datasets as one concatenated row space (``tasks.<task>.datasets``), so sampling,
row reading and exact resume are the ones every task already uses.

The conversion runs on Ray Data, one task per tar shard (``ray.data.from_items`` over the shard list,
``map`` that streams the tar through pyarrow's filesystem and writes its rows: ``unip2.data.web_pairs``).
Ray 2.60's ``ray.data.read_webdataset`` is not used because (1) a damaged tar (a download cut short)
fails its read task, and with it the whole conversion, where here the shard's good samples are kept and
the damage counted; (2) its rows reach ``write_parquet`` in the order tasks finish, in files named per
write, while an indexable row space needs the same row order on every conversion: here shard i's rows
go to ``part-{i:05d}-NNN.parquet`` in tar order; (3) the skip counts come back as the dataset's own
(tiny) rows, with no side channel next to ``write_parquet``. ``read_binary_files`` + ``tarfile`` would
hold whole shards (hundreds of MB each) in the object store; a task here streams its shard (memory: one
row group) on whichever node has a free CPU, and a retried task rewrites the same files.

Output: ``DATA_DIR/<name>/train/`` (written to a hidden sibling, renamed when every shard is done), or
``--web-pairs-out`` (a path every node sees, or a URI), written in place: the manifest, updated last
(atomically), is what makes the dataset exist. Other datasets of the folder are left untouched. On a
cluster, DATA_DIR must also be a path every node sees (as ``data.root`` for training).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import ray

from pipelines.run import ray_runtime
from unip2.data.manifest import FORMAT_VERSION, MANIFEST_FILE, load_manifest, write_manifest
from unip2.data.parquet_schema import SCHEMAS
from unip2.data.shard_paths import is_uri, list_shards
from unip2.data.web_pairs import convert_shard

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Datasets the COCO / ImageNet / Flickr30k converter writes: never replaced by web pairs.
_CONVERTER_DATASETS = frozenset(SCHEMAS) - {"web_pairs"}


def _convert(row: dict, *, rows_per_file: int) -> dict:
    """Ray Data ``map``: one shard {"index", "shard", "prefix"} → its files, row count and skip counts."""
    result = convert_shard(row["shard"], row["prefix"], rows_per_file=rows_per_file)
    return {"index": row["index"], "shard": row["shard"], "files": result["files"], "rows": result["rows"],
            "skipped": json.dumps(result["skipped"])}  # JSON: rows' reason sets differ


def _empty_manifest() -> dict:
    return {"format_version": FORMAT_VERSION, "datasets": {}, "class_names": {}, "coco_category_ids": [],
            "skipped": {}, "annotations": {"instances": {}, "captions": {}}, "sources": {}}


def summary_line(name: str, rows: int, shards: int, skipped: dict[str, int]) -> str:
    """The console line reporting a conversion: rows kept and samples skipped by reason."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))
    return (f"[web_pairs] {name}/train: {rows} rows from {shards} shards; skipped {sum(skipped.values())}"
            + (f" ({reasons})" if reasons else ""))


def add_web_pairs(sources: list[str], *, data_root: str | Path, name: str = "web_pairs", out: str | None = None,
                  overwrite: bool = False, rows_per_file: int = 1000, num_cpus: float = 1.0,
                  concurrency: int | None = None) -> dict:
    """Convert the shards of ``sources`` (folders, ``.tar`` files, URIs, brace patterns; rows in this order)
    into dataset ``name`` of the data folder ``data_root`` (created if absent); returns the new manifest.

    ``out``: where the Parquet files go (path or URI); None = ``data_root/<name>/train/``. ``overwrite``
    replaces an existing dataset ``name``. ``num_cpus`` / ``concurrency``: per shard task / tasks at once.
    Connects to Ray (``RAY_ADDRESS``, else a local Ray) unless already connected.
    """
    if not _NAME.match(name):
        raise ValueError(f"web pairs dataset name {name!r}: use lower-case letters, digits and _")
    if name in _CONVERTER_DATASETS:
        raise ValueError(f"web pairs dataset name {name!r} is one of the converter's own datasets; choose another")
    if not sources:
        raise ValueError("web pairs: give at least one shard folder, .tar file, URI or pattern")
    root = Path(data_root).expanduser().resolve()
    manifest = load_manifest(root) if (root / MANIFEST_FILE).is_file() else _empty_manifest()
    if root.exists() and not (root / MANIFEST_FILE).is_file() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists but holds no {MANIFEST_FILE}: not a converted data folder")
    if name in manifest["datasets"] and not overwrite:
        raise FileExistsError(f"dataset {name!r} is already in {root / MANIFEST_FILE}; pass overwrite=True "
                              "(--overwrite) to replace it")
    shards = [shard for source in sources for shard in list_shards(source)]  # refuses a wrong source now

    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{name}.partial-{os.getpid()}"
    replaced = root / f".{name}.replaced-{os.getpid()}"
    if out is None:
        base = str(partial / "train")
    else:
        base = out.rstrip("/") + "/train" if is_uri(out) else str(Path(out).expanduser().resolve() / "train")
    items = [{"index": i, "shard": shard, "prefix": f"{base}/part-{i:05d}"} for i, shard in enumerate(shards)]
    try:
        ray_runtime.connect()
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _convert, fn_kwargs={"rows_per_file": rows_per_file}, num_cpus=num_cpus, concurrency=concurrency)
        results = sorted(dataset.take_all(), key=lambda r: r["index"])
        rows = sum(int(r["rows"]) for r in results)
        skipped = sum((Counter(json.loads(r["skipped"])) for r in results), Counter())
        print(summary_line(name, rows, len(shards), skipped), file=sys.stderr, flush=True)
        if rows == 0:
            raise ValueError(f"web pairs: no usable sample in the {len(shards)} shards of {sources} "
                             f"(skipped: {dict(skipped)}); {root / MANIFEST_FILE} is unchanged")
        files = [str(f) for r in results for f in r["files"]]
        if out is None:  # the finished dataset takes its final name; an older one is moved aside first
            final = root / name
            if final.exists():
                final.rename(replaced)
            partial.rename(final)
            files = [str(Path(name) / Path(f).relative_to(partial)) for f in files]
        # Read again: the folder may have gained datasets while the shards converted.
        manifest = load_manifest(root) if (root / MANIFEST_FILE).is_file() else _empty_manifest()
        manifest["datasets"][name] = {"splits": {"train": {"rows": rows, "files": files}}}
        manifest["skipped"][name] = {"train": dict(sorted(skipped.items()))}
        manifest.setdefault("sources", {})[name] = list(sources)
        write_manifest(root, manifest)
    except BaseException:
        if replaced.exists():  # put the older dataset back: the manifest still describes it
            shutil.rmtree(root / name, ignore_errors=True)
            replaced.rename(root / name)
        raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(replaced, ignore_errors=True)
    return manifest
