"""Convert COCO / ImageNet / Karpathy / Flickr30k from their real formats to Parquet for Ray Data.

    python pipelines/prepare_data.py --coco data/shapes/coco --imagenet data/shapes/imagenet \\
        --karpathy data/shapes/coco/dataset_coco.json --out data/parquet
    python pipelines/prepare_data.py --coco /data/coco --imagenet /data/imagenet \\
        --karpathy /data/karpathy/dataset_coco.json \\
        --flickr30k /data/karpathy/dataset_flickr30k.json /data/flickr30k-images --out /data/unip2-parquet

Writes OUT/<dataset>/<split>/part-*.parquet and OUT/manifest.json (see unip2.data.prepare). Needs no Ray.

A task with a dataset of its own (``Task.dataset_schema``) converts its source into the folder itself, beside
whatever is there (``Task.read_source``, ``unip2.data.task_datasets``):

    python pipelines/prepare_data.py --task-data TASK SOURCE --out DATA_DIR

Web image-text pairs (img2dataset's webdataset output: folders, .tar files, s3:// URIs, brace patterns)
become dataset ``web_pairs`` (train split) with Ray Data (a local Ray, or RAY_ADDRESS's cluster); added to
an existing OUT without touching its other datasets (see pipelines/data/web_pairs.py):

    python pipelines/prepare_data.py --web-pairs /datasets/cc3m --out /datasets/unip2-parquet
    python pipelines/prepare_data.py --web-pairs 's3://bucket/laion/{00000..00127}.tar' \
        --web-pairs-out s3://bucket/unip2/web_pairs --out /datasets/unip2-parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unip2.data.prepare import prepare


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", help="COCO root: annotations/, train2017/, val2017/")
    parser.add_argument("--imagenet", help="ImageNet root: train/<wnid>/, val/..., LOC_synset_mapping.txt")
    parser.add_argument("--karpathy", help="Karpathy dataset_coco.json (caption splits train/val/test)")
    parser.add_argument("--flickr30k", nargs=2, metavar=("FILE", "DIR"),
                        help="Karpathy dataset_flickr30k.json and the Flickr30k image folder")
    parser.add_argument("--flickr30k-splits", nargs="+", default=["test"], help="Flickr30k splits to convert")
    parser.add_argument("--web-pairs", action="append", metavar="PATH_OR_URI",
                        help="WebDataset shards of image-text pairs: a folder, .tar, URI or {a..b} pattern "
                             "(repeatable; rows in the order given)")
    parser.add_argument("--web-pairs-name", default="web_pairs", help="dataset name of the web pairs")
    parser.add_argument("--web-pairs-out", metavar="PATH_OR_URI",
                        help="where the web pairs' Parquet goes (default: inside --out)")
    parser.add_argument("--web-pairs-cpus", type=float, default=1.0, help="CPUs per shard conversion task")
    parser.add_argument("--task-data", nargs=2, action="append", metavar=("TASK", "SOURCE"),
                        help="a task's own dataset from its source file or folder (repeatable); added to --out")
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite; "
                                                     "web pairs alone are added to an existing one)")
    parser.add_argument("--rows-per-shard", type=int, default=1000, help="most rows per Parquet file")
    parser.add_argument("--workers", type=int, default=None, help="threads reading and decoding images")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (with only --web-pairs: an existing web pairs dataset)")
    args = parser.parse_args(argv)
    if not (args.coco or args.imagenet or args.flickr30k or args.web_pairs or args.task_data):
        parser.error("give at least one of --coco, --imagenet, --flickr30k, --web-pairs, --task-data")
    if args.coco or args.imagenet or args.flickr30k:
        manifest = prepare(out=args.out, coco=args.coco, imagenet=args.imagenet, karpathy=args.karpathy,
                           flickr30k=tuple(args.flickr30k) if args.flickr30k else None,
                           flickr30k_splits=tuple(args.flickr30k_splits), rows_per_shard=args.rows_per_shard,
                           workers=args.workers, overwrite=args.overwrite)
    if args.web_pairs:
        from pipelines.data.web_pairs import add_web_pairs  # imports Ray, which the other converters do not need

        manifest = add_web_pairs(args.web_pairs, data_root=args.out, name=args.web_pairs_name,
                                 out=args.web_pairs_out, overwrite=args.overwrite,
                                 rows_per_file=args.rows_per_shard, num_cpus=args.web_pairs_cpus)
    for task_name, source in args.task_data or []:
        manifest = add_own_dataset(task_name, source, args.out, rows_per_shard=args.rows_per_shard,
                                   overwrite=args.overwrite)
    rows = {name: {split: entry["rows"] for split, entry in d["splits"].items()}
            for name, d in manifest["datasets"].items()}
    print(json.dumps({"out": args.out, "rows": rows, "skipped": manifest["skipped"]}, indent=2), file=sys.stderr)
    return manifest


def add_own_dataset(task_name: str, source: str, out: str, *, rows_per_shard: int, overwrite: bool) -> dict:
    """``--task-data``: the task reads its source, its dataset is written into ``out``."""
    from unip2.data.task_datasets import add_task_dataset
    from unip2.tasks import get_task

    task = get_task(task_name)
    if task.dataset_schema is None:
        raise SystemExit(f"error: the {task_name} task reads the built-in {task.dataset!r} dataset: convert it with "
                         "--coco / --imagenet / --karpathy / --flickr30k")
    return add_task_dataset(out, task.dataset, task.dataset_schema, task.read_source(Path(source)),
                            rows_per_shard=rows_per_shard, overwrite=overwrite)


if __name__ == "__main__":
    main()
