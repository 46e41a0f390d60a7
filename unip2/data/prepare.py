"""Converts the real formats to Parquet: one dataset per source and split, plus ``manifest.json``.

    from unip2.data.prepare import prepare
    prepare(out="data/parquet", coco="data/shapes/coco", imagenet="data/shapes/imagenet",
            karpathy="data/shapes/coco/dataset_coco.json")

The command line is ``pipelines/prepare_data.py``. Output: ``OUT/<dataset>/<split>/part-00000.parquet``
... (schemas in ``parquet_schema``) and ``OUT/manifest.json`` (see ``manifest``).

- ``coco_instances``: ``coco/annotations/instances_{train,val}2017.json`` + ``coco/{train,val}2017/``.
- ``coco_captions``: with a Karpathy file, its splits (train + restval -> ``train``, ``val``, ``test``); an
  entry's image is ``coco/<filepath>/<filename>``, or, when that file is absent (a 2014-named Karpathy file
  over 2017 folders), the 2017 image of the same ``cocoid``. Without one: captions_{train,val}2017.json.
- ``imagenet``: class folders + ``LOC_synset_mapping.txt`` (see ``imagenet``).
- ``flickr30k``: Karpathy ``dataset_flickr30k.json`` + its image folder; only ``flickr30k_splits``.

Bad input never stops the run: a missing, empty, truncated or undecodable image, an image whose size
differs from its annotation (``size_mismatch``), or an unusable annotation is skipped and counted in the
manifest's ``skipped`` by dataset, split and reason. A wrong root path is refused before anything is
written. Everything is written to a sibling temporary folder renamed to ``out`` at the end, so an
interrupted run leaves no ``out`` that looks complete. Progress goes to stderr every few seconds.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unip2.data.coco import CocoInstances, load_coco_captions, load_json
from unip2.data.imagenet import find_imagenet, list_split, load_synset_mapping
from unip2.data.images import ImageCheck, check_image, read_bytes
from unip2.data.karpathy import load_karpathy
from unip2.data.manifest import FORMAT_VERSION, write_manifest
from unip2.data.parquet_schema import SCHEMAS
from unip2.data.parquet_writer import ShardedParquetWriter
from unip2.data.progress import ProgressLine

COCO_SPLITS = ("train", "val")
KARPATHY_TO_SPLIT = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_CHUNK = 64  # images read and checked concurrently
# ImageNet's training rows are written in this seed's fixed random order, not by class folder: the training
# stream shuffles within windows of consecutive rows (for read locality, ``unip2.sampling``), so class-sorted
# rows would give windows of a few classes each and the classifier would chase them.
TRAIN_ORDER_SEED = 0


@dataclass(frozen=True)
class _Candidate:
    """An image to check and, if good, write with ``fields``; ``expected_size`` = annotated (width, height)."""

    path: Path
    fields: dict
    expected_size: tuple[int, int] | None = None


@dataclass
class _SplitJob:
    dataset: str
    split: str
    total: int
    candidates: Iterable[_Candidate]
    skipped: Counter = field(default_factory=Counter)  # readers add annotation-level drops while iterating


@dataclass(frozen=True)
class _CocoLayout:
    root: Path
    instances: dict[str, Path]  # split -> instances_<split>2017.json
    captions: dict[str, Path]  # split -> captions_<split>2017.json


def _coco_layout(root: str | Path, *, has_karpathy: bool) -> _CocoLayout:
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"COCO root not found: {root}")
    folder = root / "annotations"
    instances = {s: folder / f"instances_{s}2017.json" for s in COCO_SPLITS
                 if (folder / f"instances_{s}2017.json").is_file()}
    captions = {s: folder / f"captions_{s}2017.json" for s in COCO_SPLITS if (folder / f"captions_{s}2017.json").is_file()}
    if not instances and not captions and not has_karpathy:
        raise ValueError(f"COCO root {root} has no annotations/instances_{{train,val}}2017.json nor "
                         f"annotations/captions_{{train,val}}2017.json")
    for split in sorted(set(instances) | set(captions)):
        if not (root / f"{split}2017").is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {root / f'{split}2017'} "
                                    f"(annotations for {split}2017 exist)")
    return _CocoLayout(root=root, instances=instances, captions=captions)


def _instance_candidates(reader: CocoInstances, image_dir: Path, label_of: dict[int, int],
                         skipped: Counter) -> Iterator[_Candidate]:
    """Lazily, so masks of real COCO are converted image by image; annotation drops go to ``skipped``."""
    for image in reader.images:
        objects, dropped = reader.instances(image)
        known = [o for o in objects if o.category_id in label_of]
        if len(known) < len(objects):
            dropped["annotation_unknown_category"] += len(objects) - len(known)
        skipped.update(dropped)
        yield _Candidate(path=image_dir / image.file_name, expected_size=(image.width, image.height), fields={
            "image_id": image.image_id,
            "file_name": image.file_name,
            "boxes": [list(o.box) for o in known],
            "labels": [label_of[o.category_id] for o in known],
            "category_ids": [o.category_id for o in known],
            "masks": [o.mask_counts for o in known],
            "iscrowd": [o.iscrowd for o in known],
            "areas": [o.area for o in known],
        })


def _instances_jobs(layout: _CocoLayout) -> tuple[list[_SplitJob], list[tuple[int, str]]]:
    """One job per instances file; also the (category id, name) list all of them share."""
    jobs, categories = [], None
    for split, path in layout.instances.items():
        reader = CocoInstances(path)
        if categories is not None and reader.categories != categories:
            raise ValueError(f"{path} lists other categories than {layout.instances['train']}")
        categories = reader.categories
        label_of = {cid: i for i, (cid, _) in enumerate(categories)}
        job = _SplitJob(dataset="coco_instances", split=split, total=len(reader.images), candidates=[],
                        skipped=Counter(reader.dropped))
        job.candidates = _instance_candidates(reader, layout.root / f"{split}2017", label_of, job.skipped)
        jobs.append(job)
    return jobs, categories or []


def _captions_jobs_from_coco(layout: _CocoLayout) -> list[_SplitJob]:
    jobs = []
    for split, path in layout.captions.items():
        captions = load_coco_captions(path)
        image_dir = layout.root / f"{split}2017"
        candidates = [_Candidate(path=image_dir / c.image.file_name, expected_size=(c.image.width, c.image.height),
                                 fields={"image_id": c.image.image_id, "file_name": c.image.file_name,
                                         "captions": c.captions})
                      for c in captions.images]
        jobs.append(_SplitJob(dataset="coco_captions", split=split, total=len(candidates), candidates=candidates,
                              skipped=Counter(captions.dropped)))
    return jobs


def _cocoid_paths(layout: _CocoLayout) -> dict[int, Path]:
    """cocoid -> image path in the 2017 folders, from the lightest annotation files available."""
    paths = {}
    for split in COCO_SPLITS:
        source = layout.captions.get(split) or layout.instances.get(split)
        if source is not None:
            for entry in load_json(source, required_keys=("images",))["images"]:
                paths[int(entry["id"])] = layout.root / f"{split}2017" / entry["file_name"]
    return paths


def _captions_jobs_from_karpathy(layout: _CocoLayout, karpathy: Path) -> list[_SplitJob]:
    splits = load_karpathy(karpathy)
    jobs = {s: _SplitJob(dataset="coco_captions", split=s, total=0, candidates=[]) for s in ("train", "val", "test")}
    by_cocoid: dict[int, Path] | None = None
    for entry in splits.images:
        job = jobs[KARPATHY_TO_SPLIT[entry.split]]
        if not any(entry.captions):
            job.skipped["image_without_captions"] += 1
            continue
        path = layout.root / (entry.filepath or "") / entry.filename
        if not path.is_file() and entry.cocoid is not None:
            by_cocoid = _cocoid_paths(layout) if by_cocoid is None else by_cocoid
            path = by_cocoid.get(entry.cocoid, path)
        image_id = entry.cocoid if entry.cocoid is not None else entry.index
        job.candidates.append(_Candidate(path=path, fields={
            "image_id": image_id, "file_name": path.name, "captions": [c for c in entry.captions if c]}))
        job.total += 1
    return list(jobs.values())


def _flickr_jobs(annotations: Path, image_dir: Path, splits: tuple[str, ...]) -> list[_SplitJob]:
    parsed = load_karpathy(annotations)
    jobs = {s: _SplitJob(dataset="flickr30k", split=s, total=0, candidates=[]) for s in splits}
    for entry in parsed.images:
        split = KARPATHY_TO_SPLIT[entry.split]
        if split not in jobs:
            continue
        if not any(entry.captions):
            jobs[split].skipped["image_without_captions"] += 1
            continue
        jobs[split].candidates.append(_Candidate(path=image_dir / entry.filename, fields={
            "image_id": entry.index, "file_name": entry.filename, "captions": [c for c in entry.captions if c]}))
        jobs[split].total += 1
    return list(jobs.values())


def _imagenet_jobs(root: Path) -> tuple[list[_SplitJob], list[str]]:
    layout = find_imagenet(root)
    mapping = load_synset_mapping(layout.mapping_file)
    wnids = list(mapping)
    jobs = []
    for split in layout.split_dirs:
        files, dropped = list_split(layout, split, wnids)
        if split == "train":  # class folders are sorted; see TRAIN_ORDER_SEED
            files = [files[i] for i in np.random.default_rng(TRAIN_ORDER_SEED).permutation(len(files))]
        candidates = [_Candidate(path=f.path, fields={"image_id": index, "file_name": f.file_name, "label": f.label,
                                                      "wnid": f.wnid})
                      for index, f in enumerate(files)]
        jobs.append(_SplitJob(dataset="imagenet", split=split, total=len(files), candidates=candidates,
                              skipped=Counter(dropped)))
    return jobs, list(mapping.values())


def _load(candidate: _Candidate) -> tuple[bytes | None, ImageCheck]:
    data, reason = read_bytes(candidate.path)
    if reason is not None:
        return None, ImageCheck(reason=reason)
    return data, check_image(data)


def _run_job(job: _SplitJob, *, out: Path, rows_per_shard: int, pool: ThreadPoolExecutor,
             progress_interval_s: float) -> dict:
    """Check and write one split; returns its manifest entry."""
    writer = ShardedParquetWriter(folder=out / job.dataset / job.split, schema=SCHEMAS[job.dataset],
                                  rows_per_shard=rows_per_shard)
    progress = ProgressLine(label=f"{job.dataset}/{job.split}", total=job.total, interval_s=progress_interval_s)
    candidates: Iterator[_Candidate] = iter(job.candidates)
    while chunk := list(itertools.islice(candidates, _CHUNK)):
        for candidate, (data, check) in zip(chunk, pool.map(_load, chunk)):
            reason = check.reason
            if reason is None and candidate.expected_size not in (None, (check.width, check.height)):
                reason = "size_mismatch"
            if reason is not None:
                job.skipped[reason] += 1
                progress.update(skipped=1)
                continue
            writer.write({"image": data, "width": check.width, "height": check.height, **candidate.fields})
            progress.update()
    shards = writer.close()
    progress.close()
    return {"rows": writer.rows, "files": [f"{job.dataset}/{job.split}/{name}" for name in shards]}


def prepare(*, out: str | Path, coco: str | Path | None = None, imagenet: str | Path | None = None,
            karpathy: str | Path | None = None, flickr30k: tuple[str | Path, str | Path] | None = None,
            flickr30k_splits: tuple[str, ...] = ("test",), rows_per_shard: int = 1000, workers: int | None = None,
            overwrite: bool = False, progress_interval_s: float = 5.0) -> dict:
    """Convert the given sources into ``out``; returns the manifest (also written to ``out/manifest.json``).

    ``flickr30k`` = (``dataset_flickr30k.json``, image folder). ``workers`` = threads reading and decoding
    images (default: CPU count, at most 8).
    """
    if coco is None and imagenet is None and flickr30k is None:
        raise ValueError("nothing to convert: give coco, imagenet and/or flickr30k")
    unknown = [s for s in flickr30k_splits if s not in ("train", "val", "test")]
    if unknown:
        raise ValueError(f"flickr30k_splits {unknown} unknown; choose from train, val, test")
    if karpathy is not None and coco is None:
        raise ValueError("a Karpathy COCO split file needs the COCO root (coco=...) holding its images")
    # Refuse wrong paths before writing anything.
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass overwrite=True (--overwrite) to replace it")
    karpathy = Path(karpathy).resolve() if karpathy is not None else None
    if karpathy is not None and not karpathy.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {karpathy}")
    coco_layout = _coco_layout(coco, has_karpathy=karpathy is not None) if coco is not None else None
    imagenet_root = find_imagenet(imagenet).root if imagenet is not None else None
    if flickr30k is not None:
        flickr_json, flickr_images = (Path(p).resolve() for p in flickr30k)
        if not flickr_json.is_file():
            raise FileNotFoundError(f"Flickr30k Karpathy file not found: {flickr_json}")
        if not flickr_images.is_dir():
            raise FileNotFoundError(f"Flickr30k image folder not found: {flickr_images}")

    manifest = {"format_version": FORMAT_VERSION, "datasets": {}, "class_names": {}, "coco_category_ids": [],
                "skipped": {}, "annotations": {"instances": {}, "captions": {}},
                "sources": {"coco": str(coco_layout.root) if coco_layout else None,
                            "imagenet": str(imagenet_root) if imagenet_root else None,
                            "karpathy": str(karpathy) if karpathy else None,
                            "flickr30k": {"annotations": str(flickr_json), "images": str(flickr_images)}
                            if flickr30k is not None else None}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    workers = workers or min(os.cpu_count() or 1, 8)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            def run(jobs: list[_SplitJob]) -> None:
                for job in jobs:
                    entry = _run_job(job, out=tmp, rows_per_shard=rows_per_shard, pool=pool,
                                     progress_interval_s=progress_interval_s)
                    manifest["datasets"].setdefault(job.dataset, {"splits": {}})["splits"][job.split] = entry
                    manifest["skipped"].setdefault(job.dataset, {})[job.split] = dict(sorted(job.skipped.items()))

            if coco_layout is not None:
                jobs, categories = _instances_jobs(coco_layout)
                if categories:
                    manifest["class_names"]["coco"] = [name for _, name in categories]
                    manifest["coco_category_ids"] = [cid for cid, _ in categories]
                run(jobs)
                del jobs  # frees the instances index, large for real COCO
                run(_captions_jobs_from_karpathy(coco_layout, karpathy) if karpathy is not None
                    else _captions_jobs_from_coco(coco_layout))
                manifest["annotations"] = {"instances": {s: str(p) for s, p in coco_layout.instances.items()},
                                           "captions": {s: str(p) for s, p in coco_layout.captions.items()}}
            if imagenet_root is not None:
                jobs, class_names = _imagenet_jobs(imagenet_root)
                manifest["class_names"]["imagenet"] = class_names
                run(jobs)
            if flickr30k is not None:
                run(_flickr_jobs(flickr_json, flickr_images, flickr30k_splits))
        write_manifest(tmp, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
