"""Readers of COCO annotation files: instances (through pycocotools) and captions.

Both read the official files (``instances_train2017.json``, ``captions_val2017.json``, ...) as well as
the shapes world's. Instance masks come out as compressed RLE ``counts`` strings at the image's
height x width, whatever the file holds (polygons, uncompressed crowd RLE, compressed RLE). Annotations
that cannot be used are dropped and counted by reason, never raised:

- ``annotation_without_image``: its ``image_id`` is not in ``images``;
- ``annotation_invalid_box``: no ``bbox``, or width/height <= 0;
- ``annotation_invalid_segmentation``: no usable polygon (>= 3 points) or RLE of the image's size.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO


@dataclass(frozen=True)
class CocoImage:
    """One entry of a COCO file's ``images`` list."""

    image_id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoInstance:
    """One usable object annotation. ``box`` is COCO (x, y, w, h) in pixels."""

    box: tuple[float, float, float, float]
    category_id: int
    mask_counts: str  # compressed COCO RLE at the image's height x width
    iscrowd: int
    area: float


@dataclass(frozen=True)
class CaptionedImage:
    image: CocoImage
    captions: list[str]


@dataclass
class CocoCaptions:
    """Images with at least one caption, in ``images`` order, and the annotations dropped."""

    images: list[CaptionedImage]
    dropped: Counter = field(default_factory=Counter)


def load_json(path: str | Path, *, required_keys: tuple[str, ...] = ()) -> dict:
    """Parse a JSON file, refusing a missing file or bad JSON with the path in the message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    missing = [key for key in required_keys if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}; is it the right file?")
    return payload


def _image(entry: dict) -> CocoImage:
    return CocoImage(image_id=int(entry["id"]), file_name=str(entry["file_name"]), width=int(entry["width"]),
                     height=int(entry["height"]))


class CocoInstances:
    """An instances file: categories, images, and each image's usable instances.

    ``categories`` is [(category_id, name)] sorted by id; a category's contiguous label is its index there.
    ``images`` is sorted by id and includes images without annotations (normal in COCO).
    """

    def __init__(self, annotation_file: str | Path):
        self.path = Path(annotation_file)
        payload = load_json(self.path, required_keys=("images", "annotations", "categories"))
        self._coco = COCO()
        self._coco.dataset = payload
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self._coco.createIndex()
        self.categories: list[tuple[int, str]] = sorted((int(c["id"]), str(c["name"])) for c in payload["categories"])
        self.images: list[CocoImage] = [_image(self._coco.imgs[i]) for i in sorted(self._coco.imgs)]
        orphans = sum(1 for ann in payload["annotations"] if ann.get("image_id") not in self._coco.imgs)
        self.dropped: Counter = Counter({"annotation_without_image": orphans} if orphans else {})

    def instances(self, image: CocoImage) -> tuple[list[CocoInstance], Counter]:
        """The image's usable instances in file order, and the annotations dropped by reason."""
        kept, dropped = [], Counter()
        for ann in self._coco.imgToAnns.get(image.image_id, []):
            box = ann.get("bbox")
            if not box or len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                dropped["annotation_invalid_box"] += 1
                continue
            counts = _mask_counts(ann.get("segmentation"), image.height, image.width)
            if counts is None:
                dropped["annotation_invalid_segmentation"] += 1
                continue
            kept.append(CocoInstance(box=tuple(float(v) for v in box), category_id=int(ann["category_id"]),
                                     mask_counts=counts, iscrowd=int(ann.get("iscrowd", 0)),
                                     area=float(ann.get("area", 0.0))))
        return kept, dropped


def _mask_counts(segmentation, height: int, width: int) -> str | None:
    """Compressed RLE counts (str) of a polygon list / uncompressed RLE / compressed RLE; None if unusable."""
    if isinstance(segmentation, list):
        # pycocotools reads a 4-number list as a box, and rejects < 3 points: keep real polygons only.
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(v) for v in segmentation["size"]] != [height, width]:
            return None
        if isinstance(segmentation["counts"], list):  # uncompressed RLE, as crowd annotations are stored
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        return None
    counts = rle["counts"]
    return counts.decode("utf-8") if isinstance(counts, bytes) else str(counts)


def load_coco_captions(annotation_file: str | Path) -> CocoCaptions:
    """A captions file: images that have captions, with their raw sentences (surrounding spaces removed)."""
    path = Path(annotation_file)
    payload = load_json(path, required_keys=("images", "annotations"))
    images = {int(entry["id"]): _image(entry) for entry in payload["images"]}
    sentences: dict[int, list[str]] = {}
    dropped = Counter()
    for ann in payload["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in images:
            dropped["annotation_without_image"] += 1
        elif not str(ann.get("caption", "")).strip():
            dropped["annotation_empty_caption"] += 1
        else:
            sentences.setdefault(int(image_id), []).append(str(ann["caption"]).strip())
    uncaptioned = sum(1 for image_id in images if image_id not in sentences)
    if uncaptioned:
        dropped["image_without_captions"] = uncaptioned
    captioned = [CaptionedImage(image=images[i], captions=sentences[i]) for i in sorted(sentences)]
    return CocoCaptions(images=captioned, dropped=dropped)
