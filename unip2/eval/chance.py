"""Chance levels: the score of a model that answers each evaluated example with what a random *training* example
shows, so that the dataset's own prior (class balance, box sizes, caption templates) counts as chance. The
formulas are here; each task's ``chance_levels`` says which apply to it (``unip2.tasks``).

- classification top-1: a random training label → the validation share of each training label's class;
- retrieval R@1: a random ranking → image→text k_i / N texts (k_i the image's captions), text→image 1 / N images;
- captioning BLEU-4 / CIDEr: a random training caption for each image (mean over ``draws``);
- detection box AP: the objects of a random training image, boxes scaled to the image (mean over ``draws``),
  scored by COCOeval like the trials' predictions.
"""

from __future__ import annotations

import collections
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unip2.data.manifest import load_manifest, read_rows
from unip2.eval.caption_scores import caption_metrics
from unip2.eval.coco_detection import coco_eval, write_coco_results


@dataclass
class ChanceData:
    """The data a chance level is measured on: a converted folder's split, as the trials are evaluated on it."""

    data_root: Path
    split: str = "val"
    max_images: int | None = None
    """Only the first rows of each dataset's split (None = all)."""
    draws: int = 3
    """Random draws averaged where chance is drawn (captions, transplanted objects)."""

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        self.manifest = load_manifest(self.data_root)

    def has(self, dataset: str, *splits: str) -> bool:
        """Whether ``dataset`` has every one of ``splits`` (the evaluated split when none is named)."""
        present = self.manifest["datasets"].get(dataset, {}).get("splits", {})
        return all(split in present for split in (splits or (self.split,)))

    def evaluated(self, dataset: str, columns: list[str]) -> list[dict]:
        """The evaluated rows of ``dataset``."""
        return read_rows(self.data_root, dataset, self.split, columns)[:self.max_images]

    def training(self, dataset: str, columns: list[str]) -> list[dict]:
        """Every training row of ``dataset``."""
        return read_rows(self.data_root, dataset, "train", columns)

    def annotation_file(self, kind: str) -> str | None:
        """The evaluated split's annotation file of ``kind`` (``instances``, ``captions``) in its source format."""
        return self.manifest.get("annotations", {}).get(kind, {}).get(self.split)


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
