"""Numpy image operations shared by the task preprocessors (decode, letterbox, crop, masks).

Everything here runs on CPU workers (Ray Data ``map_batches`` or a plain loop) and returns numpy.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


class UndecodableImage(ValueError):
    """An image's bytes do not decode. Training and evaluation skip the row and count it
    (``Task.preprocess_decodable``); Serve answers 400."""

    reason = "undecodable image"
    """The key skipped rows are counted under."""


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes → RGB PIL image (raises UndecodableImage with the reason when undecodable)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises many types for bad data
        raise UndecodableImage(f"{UndecodableImage.reason}: {err}") from err
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float]:
    """Resize the longer side to ``size`` (aspect kept), pad bottom/right with zeros.

    Returns (size×size×3 uint8, scale) where resized = original × scale.
    """
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, scale


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.5, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop of a random area/aspect, resized to size×size×3 uint8."""
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        crop_w = int(round(np.sqrt(target * aspect)))
        crop_h = int(round(np.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(rng.integers(0, width - crop_w + 1))
            top = int(rng.integers(0, height - crop_h + 1))
            image = image.crop((left, top, left + crop_w, top + crop_h))
            break
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def center_resize(image: Image.Image, size: int) -> np.ndarray:
    """Evaluation-time resize to size×size×3 uint8."""
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    """Compressed COCO RLE counts → H×W uint8 mask."""
    return mask_utils.decode({"size": [height, width], "counts": counts.encode("utf-8")})


def encode_rle(mask: np.ndarray) -> dict:
    """H×W binary mask → COCO RLE dict with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def letterbox_mask(mask: np.ndarray, scale: float, size: int, stride: int) -> np.ndarray:
    """Place an H×W mask on the letterboxed canvas and downsample by ``stride`` → (size/stride)² uint8."""
    height, width = mask.shape
    out = size // stride
    new_w = max(1, round(width * scale / stride))
    new_h = max(1, round(height * scale / stride))
    resized = np.asarray(Image.fromarray(mask * 255).resize((new_w, new_h), Image.BILINEAR)) >= 128
    canvas = np.zeros((out, out), dtype=np.uint8)
    canvas[:min(new_h, out), :min(new_w, out)] = resized[:out, :out]
    return canvas


def object_array(items: list) -> np.ndarray:
    """A 1-D object array holding ragged per-row arrays (numpy would otherwise try to stack them)."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array
