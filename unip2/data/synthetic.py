"""The embedded default dataset: a deterministic shapes world written in the real formats.

    python -m unip2.data.synthetic --out data/shapes
    python -m unip2.data.synthetic --out data/shapes --seed 1 --train-images 200 --val-images 50 \\
        --cls-train-per-class 10 --cls-val-per-class 4 --flickr-images 40 --image-size 96

Layout under ``--out`` (the real datasets' folder and file names, so the real readers read it):

    coco/train2017/000000000001.jpg ...            coco/val2017/...
    coco/annotations/instances_{train,val}2017.json   polygons for unoccluded objects, RLE for occluded ones
    coco/annotations/captions_{train,val}2017.json    5 captions per image
    coco/dataset_coco.json                            Karpathy split file
    imagenet/train/<wnid>/<wnid>_<i>.JPEG             imagenet/val/<wnid>/ILSVRC2012_val_<k>.JPEG
    imagenet/LOC_synset_mapping.txt                   "n01011000 red circle" lines
    flickr30k/dataset_flickr30k.json                  Karpathy split file (no filepath / cocoid, as the real one)
    flickr30k/flickr30k-images/1000000000.jpg ...     5 captions per image, all in the ``test`` split

Karpathy splits: each train2017 image is ``train`` or, with probability 0.1, ``restval`` (restval is
training data, as in the original file); the val2017 images are shuffled and halved into ``val`` and
``test``. So val and test captions live in ``captions_val2017.json`` and no caption-training image is a
val2017 image. The Flickr30k-style images are new scenes of the same world, all in the Karpathy ``test``
split: the zero-shot retrieval benchmark (paper Table 6), which no run trains on.

Every image is drawn from its own generator seeded by (seed, part, index), so the output is byte-identical
for a seed, however it is produced. Output is written to a sibling temporary folder and renamed at the
end; an existing ``--out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from unip2.data.caption_templates import NUMBER_WORDS, ObjectFacts, make_captions
from unip2.data.scenes import Scene, render, sample_classification_scene, sample_detection_scene
from unip2.data.shapes import CATEGORIES, encode_mask

# The "part" element of every per-image seed.
# The default output's version: part of the embedded cache folder's name, raised whenever the defaults change
# what is generated, so a cache written by an older generator is not reused (2: 500 training images per class).
GENERATOR_VERSION = 2
_PART_COCO_TRAIN, _PART_COCO_VAL, _PART_CLS_TRAIN, _PART_CLS_VAL, _PART_KARPATHY, _PART_FLICKR = range(6)
_FLICKR_FIRST_NAME = 1000000000  # Flickr30k files are named by photo id, e.g. 1000092795.jpg
_RESTVAL_FRACTION = 0.1
_INFO = {"description": "unip2 shapes world", "version": "1.0", "year": 2017, "contributor": "unip2",
         "date_created": "2017/09/01"}
_LICENSES = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Sizes and seed of the shapes world."""

    seed: int = 0
    """Seed of every random draw; same seed, same bytes."""
    train_images: int = 2000
    """COCO-style train2017 images (detection, segmentation, captions)."""
    val_images: int = 300
    """COCO-style val2017 images; the Karpathy val and test splits are drawn from them."""
    cls_train_per_class: int = 500
    """ImageNet-style training images per category (stage 1 pretrains the image encoder on them: with 100 a
    classifier generalizes visibly worse, 0.64 against 0.74 top-1 after the same 300 steps of 32 at 64 px)."""
    cls_val_per_class: int = 20
    """ImageNet-style validation images per category."""
    flickr_images: int = 100
    """Flickr30k-style images (Karpathy ``test`` split, for zero-shot retrieval); 0 = no Flickr30k folder."""
    image_size: int = 112
    """Side of the square images in pixels."""
    max_objects: int = 4
    """Most objects in a COCO-style image (at least one; captions count up to four)."""
    captions_per_image: int = 5
    """Captions written per COCO-style image."""
    jpeg_quality: int = 90
    """JPEG quality of every image."""

    def __post_init__(self) -> None:
        for name in ("train_images", "val_images", "cls_train_per_class", "cls_val_per_class", "flickr_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if not 1 <= self.max_objects <= len(NUMBER_WORDS):
            raise ValueError(f"max_objects must be in [1, {len(NUMBER_WORDS)}], got {self.max_objects}")
        if self.captions_per_image < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {self.captions_per_image}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _instance_annotation(obj, *, annotation_id: int, image_id: int) -> dict:
    """COCO annotation of one object: its polygon when nothing covers it, else the RLE of what is visible."""
    rle = encode_mask(obj.visible)
    coded = {"size": rle["size"], "counts": rle["counts"].encode("utf-8")}
    unoccluded = bool((obj.visible == obj.mask).all())
    segmentation = [obj.polygon.reshape(-1).tolist()] if unoccluded else rle
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj.category.id,
        "segmentation": segmentation,
        "area": float(mask_utils.area(coded)),
        "bbox": [float(v) for v in mask_utils.toBbox(coded)],  # tight box of the visible mask
        "iscrowd": 0,
    }


def _captions(scene: Scene, config: SyntheticConfig, rng: np.random.Generator) -> list[str]:
    facts = [ObjectFacts(colour=o.category.colour, shape=o.category.shape, size=o.size_word, cx=o.cx, cy=o.cy)
             for o in scene.objects]
    return make_captions(facts, tone=scene.tone, image_size=config.image_size, rng=rng,
                         count=config.captions_per_image)


def _write_coco_split(root: Path, split: str, *, part: int, count: int, first_image_id: int,
                      first_annotation_id: int, first_caption_id: int, config: SyntheticConfig) -> dict:
    """Draw, save and annotate one split; returns its images, instance annotations and captions."""
    image_dir = root / "coco" / split
    image_dir.mkdir(parents=True)
    images, instances, captions = [], [], []
    for index in range(count):
        rng = np.random.default_rng([config.seed, part, index])
        scene = sample_detection_scene(rng, size=config.image_size, max_objects=config.max_objects)
        pixels = render(scene, rng)
        image_id = first_image_id + index
        file_name = f"{image_id:012d}.jpg"
        (image_dir / file_name).write_bytes(_jpeg(pixels, config.jpeg_quality))
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": config.image_size,
                       "width": config.image_size, "date_captured": "2017-09-01 00:00:00", "flickr_url": "",
                       "id": image_id})
        for obj in scene.objects:
            instances.append(_instance_annotation(obj, annotation_id=first_annotation_id + len(instances),
                                                  image_id=image_id))
        for sentence in _captions(scene, config, rng):
            captions.append({"image_id": image_id, "id": first_caption_id + len(captions), "caption": sentence})
    return {"images": images, "instances": instances, "captions": captions}


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, separators=(",", ":")))


def _karpathy(splits: dict[str, dict], config: SyntheticConfig) -> dict:
    """The Karpathy split file over both COCO splits (see the module docstring for the split rule)."""
    rng = np.random.default_rng([config.seed, _PART_KARPATHY])
    train_images = splits["train2017"]["images"]
    val_images = splits["val2017"]["images"]
    split_of = {img["id"]: ("restval" if rng.random() < _RESTVAL_FRACTION else "train") for img in train_images}
    order = rng.permutation(len(val_images))
    for rank, i in enumerate(order):
        split_of[val_images[i]["id"]] = "val" if rank < len(val_images) // 2 else "test"
    entries, sentence_id = [], 0
    for folder in ("train2017", "val2017"):
        by_image: dict[int, list[str]] = {}
        for ann in splits[folder]["captions"]:
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        for img in splits[folder]["images"]:
            imgid = len(entries)
            sentences = []
            for raw in by_image[img["id"]]:
                sentences.append({"tokens": raw.split(), "raw": raw, "imgid": imgid, "sentid": sentence_id})
                sentence_id += 1
            entries.append({"filepath": folder, "sentids": [s["sentid"] for s in sentences],
                            "filename": img["file_name"], "imgid": imgid, "split": split_of[img["id"]],
                            "sentences": sentences, "cocoid": img["id"]})
    return {"images": entries, "dataset": "coco"}


def _write_imagenet(root: Path, config: SyntheticConfig) -> int:
    """Class folders named by wnid plus LOC_synset_mapping.txt; returns the number of images."""
    base = root / "imagenet"
    written, val_index = 0, 0
    categories = sorted(CATEGORIES, key=lambda c: c.wnid)
    for split, part, per_class in (("train", _PART_CLS_TRAIN, config.cls_train_per_class),
                                   ("val", _PART_CLS_VAL, config.cls_val_per_class)):
        for class_index, category in enumerate(categories):
            folder = base / split / category.wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.default_rng([config.seed, part, class_index, i])
                pixels = render(sample_classification_scene(rng, size=config.image_size, category=category), rng)
                if split == "train":
                    name = f"{category.wnid}_{i}.JPEG"
                else:
                    val_index += 1
                    name = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                (folder / name).write_bytes(_jpeg(pixels, config.jpeg_quality))
                written += 1
    (base / "LOC_synset_mapping.txt").write_text("".join(f"{c.wnid} {c.name}\n" for c in categories))
    return written


def _write_flickr30k(root: Path, config: SyntheticConfig) -> int:
    """``flickr30k/flickr30k-images/`` + its Karpathy ``dataset_flickr30k.json``; returns the number of images."""
    if config.flickr_images == 0:
        return 0
    image_dir = root / "flickr30k" / "flickr30k-images"
    image_dir.mkdir(parents=True)
    entries, sentence_id = [], 0
    for index in range(config.flickr_images):
        rng = np.random.default_rng([config.seed, _PART_FLICKR, index])
        scene = sample_detection_scene(rng, size=config.image_size, max_objects=config.max_objects)
        file_name = f"{_FLICKR_FIRST_NAME + index}.jpg"
        (image_dir / file_name).write_bytes(_jpeg(render(scene, rng), config.jpeg_quality))
        sentences = []
        for raw in _captions(scene, config, rng):
            sentences.append({"tokens": raw.split(), "raw": raw, "imgid": index, "sentid": sentence_id})
            sentence_id += 1
        entries.append({"sentids": [s["sentid"] for s in sentences], "imgid": index, "sentences": sentences,
                        "split": "test", "filename": file_name})
    _write_json(root / "flickr30k" / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    return len(entries)


def generate(out: str | Path, config: SyntheticConfig = SyntheticConfig(), *, overwrite: bool = False) -> dict:
    """Write the shapes world under ``out``; returns a summary (counts per split, seconds)."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        coco_categories = [{"supercategory": c.shape, "id": c.id, "name": c.name} for c in CATEGORIES]
        splits: dict[str, dict] = {}
        next_image, next_annotation, next_caption = 1, 1, 1
        for folder, part, count in (("train2017", _PART_COCO_TRAIN, config.train_images),
                                    ("val2017", _PART_COCO_VAL, config.val_images)):
            split = _write_coco_split(tmp, folder, part=part, count=count, first_image_id=next_image,
                                      first_annotation_id=next_annotation, first_caption_id=next_caption,
                                      config=config)
            splits[folder] = split
            next_image += count
            next_annotation += len(split["instances"])
            next_caption += len(split["captions"])
            annotations = tmp / "coco" / "annotations"
            _write_json(annotations / f"instances_{folder}.json",
                        {"info": _INFO, "licenses": _LICENSES, "images": split["images"],
                         "annotations": split["instances"], "categories": coco_categories})
            _write_json(annotations / f"captions_{folder}.json",
                        {"info": _INFO, "licenses": _LICENSES, "images": split["images"],
                         "annotations": split["captions"]})
        _write_json(tmp / "coco" / "dataset_coco.json", _karpathy(splits, config))
        classification_images = _write_imagenet(tmp, config)
        flickr_images = _write_flickr30k(tmp, config)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "config": asdict(config),
        "coco": {folder: {"images": len(s["images"]), "objects": len(s["instances"]),
                          "captions": len(s["captions"])} for folder, s in splits.items()},
        "imagenet_images": classification_images,
        "flickr30k_images": flickr_images,
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    defaults = SyntheticConfig()
    for name in ("seed", "train_images", "val_images", "cls_train_per_class", "cls_val_per_class", "flickr_images",
                 "image_size", "max_objects", "captions_per_image", "jpeg_quality"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                            help=f"default {getattr(defaults, name)}")
    args = parser.parse_args(argv)
    config = SyntheticConfig(**{k: v for k, v in vars(args).items() if k not in ("out", "overwrite")})
    summary = generate(args.out, config, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
