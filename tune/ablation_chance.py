"""Chance level of every ablation column on the data the trials are evaluated on: the score of a model that
answers each validation image with what a random *training* example shows, so that the dataset's own
prior (class balance, box sizes, caption templates) counts as chance.

- classification top-1: a random training label → the validation share of each training label's class;
- retrieval R@1: a random ranking → image→text k_i / N texts (k_i the image's captions), text→image 1 / N images;
- captioning BLEU-4 / CIDEr: a random training caption for each image (mean over ``draws``);
- detection box AP: the objects of a random training image, boxes scaled to the image (mean over ``draws``),
  scored by COCOeval like the trials' predictions.

Values are fractions, keyed like the trial rows (``<task>/<metric>``).
"""

from __future__ import annotations

import collections
import random
import tempfile
from pathlib import Path

import numpy as np

from unip2.data.manifest import load_manifest, read_rows
from unip2.eval.caption_scores import caption_metrics, load_coco_caption_references
from unip2.eval.coco_detection import coco_eval, write_coco_results


def classification_chance(train_labels: list[int], val_labels: list[int]) -> float:
    """Expected top-1 of predicting a random training example's label."""
    train = collections.Counter(train_labels)
    return sum(train[label] for label in val_labels) / (len(train_labels) * len(val_labels))


def retrieval_chance(captions_per_image: list[int]) -> dict[str, float]:
    """Expected R@1 of a uniformly random ranking (image→text: the top text is one of the image's own)."""
    texts = sum(captions_per_image)
    return {"i2t_R@1": float(np.mean([k / texts for k in captions_per_image])),
            "t2i_R@1": 1.0 / len(captions_per_image)}


def caption_chance(train_captions: list[str], references: dict[int, list[str]], *, draws: int = 3,
                   seed: int = 0) -> dict[str, float]:
    """BLEU-4 and CIDEr of a random training caption per image, mean over ``draws``."""
    scores = collections.defaultdict(list)
    for draw in range(draws):
        rng = random.Random(seed + draw)
        predictions = {image_id: rng.choice(train_captions) for image_id in references}
        metrics = caption_metrics(predictions, references, meteor=False)  # tokenized as the trials are
        for name in ("BLEU-4", "CIDEr"):
            scores[name].append(metrics[name])
    return {name: float(np.mean(values)) for name, values in scores.items()}


def transplanted_objects(val_rows: list[dict], train_rows: list[dict], rng: random.Random) -> list[dict]:
    """COCO result entries: each validation image gets a random training image's boxes and categories,
    scaled to its size, with random scores."""
    results = []
    for row in val_rows:
        source = train_rows[rng.randrange(len(train_rows))]
        sx, sy = row["width"] / source["width"], row["height"] / source["height"]
        for box, category in zip(source["boxes"], source["category_ids"]):
            x, y, w, h = box  # COCO (x, y, w, h) pixels
            results.append({"image_id": int(row["image_id"]), "category_id": int(category), "score": rng.random(),
                            "bbox": [x * sx, y * sy, w * sx, h * sy]})
    return results


def detection_chance(val_rows: list[dict], train_rows: list[dict], instances_file: str | Path, *,
                     draws: int = 3, seed: int = 0) -> float:
    """Box AP of a random training image's objects on each validation image, mean over ``draws``."""
    image_ids = [int(row["image_id"]) for row in val_rows]
    aps = []
    with tempfile.TemporaryDirectory() as scratch:
        for draw in range(draws):
            results = transplanted_objects(val_rows, train_rows, random.Random(seed + draw))
            path = write_coco_results(results, Path(scratch) / f"draw{draw}.json")
            aps.append(coco_eval(instances_file, path, "bbox", image_ids=image_ids)["AP"])
    return float(np.mean(aps))


def chance_levels(data_root: str | Path, tasks: list[str], *, split: str = "val", max_images: int | None = None,
                  draws: int = 3) -> dict[str, float]:
    """``<task>/<metric>`` → chance level, for the ablation columns of ``tasks`` whose data the split has, on
    the first ``max_images`` rows of each dataset's split (as the trials are evaluated; None = all)."""
    manifest = load_manifest(data_root)

    def evaluated(dataset: str, columns: list[str]) -> list[dict]:
        return read_rows(data_root, dataset, split, columns)[:max_images]

    splits = {name: info["splits"] for name, info in manifest["datasets"].items()}
    annotations = manifest.get("annotations", {})
    levels: dict[str, float] = {}
    if "classification" in tasks and split in splits.get("imagenet", {}):
        levels["classification/top1"] = classification_chance(
            [r["label"] for r in read_rows(data_root, "imagenet", "train", ["label"])],
            [r["label"] for r in evaluated("imagenet", ["label"])])
    captioned = splits.get("coco_captions", {})
    if split in captioned:
        val = evaluated("coco_captions", ["image_id", "captions"])
        if "retrieval" in tasks:
            levels |= {f"retrieval/{k}": v for k, v in retrieval_chance([len(r["captions"]) for r in val]).items()}
        if "captioning" in tasks and "train" in captioned:
            train = [c for r in read_rows(data_root, "coco_captions", "train", ["captions"]) for c in r["captions"]]
            references = _caption_references(annotations, split, val)
            levels |= {f"captioning/{k}": v for k, v in caption_chance(train, references, draws=draws).items()}
    instances = annotations.get("instances", {}).get(split)
    if "detection" in tasks and instances and {"train", split} <= set(splits.get("coco_instances", {})):
        columns = ["image_id", "width", "height", "boxes", "category_ids"]
        levels["detection/bbox_AP"] = detection_chance(evaluated("coco_instances", columns),
                                                       read_rows(data_root, "coco_instances", "train", columns),
                                                       instances, draws=draws)
    return levels


def _caption_references(annotations: dict, split: str, val: list[dict]) -> dict[int, list[str]]:
    """The split's reference captions as the captioning evaluation reads them (the COCO captions file when the
    data has one, else the rows' own captions)."""
    captions_file = annotations.get("captions", {}).get(split)
    if captions_file:
        return load_coco_caption_references(captions_file, [r["image_id"] for r in val])
    return {int(r["image_id"]): list(r["captions"]) for r in val}
