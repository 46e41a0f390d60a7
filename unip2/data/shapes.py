"""Shapes world: its categories, and one shape rasterized to a binary mask.

A category is a (colour, shape) pair named by words, e.g. "red circle": the model scores class *names*.
Every shape is a polygon rasterized by pycocotools, so the polygon written to the COCO annotation
decodes to exactly the pixels painted in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 45, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 220),
}

# Circumradius per unit of "size" (the object's nominal extent), chosen so shapes of one size
# cover roughly comparable areas.
_RADIUS_SCALE = {"circle": 0.5, "square": 0.6, "triangle": 0.64, "star": 0.64}
_CIRCLE_VERTICES = 32
_STAR_INNER_RATIO = 0.45


@dataclass(frozen=True)
class Category:
    """One shapes-world category; ``id`` is its COCO category id (non-contiguous, like real COCO)."""

    id: int
    shape: str
    colour: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def wnid(self) -> str:
        """A fake WordNet id, "n0" + 7 digits, increasing with ``id`` so sorted wnids follow COCO order."""
        return f"n0{1_000_000 + 1000 * self.id:07d}"


# Ids 11, 12, 13, 21, ...: gaps on purpose, so readers must map category ids to contiguous labels.
CATEGORIES: tuple[Category, ...] = tuple(
    Category(id=10 * (s + 1) + c + 1, shape=shape, colour=colour)
    for s, shape in enumerate(SHAPES)
    for c, colour in enumerate(COLOURS)
)


def shape_radius(shape: str, size: float) -> float:
    """Circumradius in pixels of ``shape`` drawn at nominal ``size``."""
    return _RADIUS_SCALE[shape] * size


def shape_polygon(shape: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices (P, 2) as (x, y) pixels of ``shape`` centred at (cx, cy), rotated by ``angle`` radians.

    Coordinates are rounded to 2 decimals: the rounded polygon is what the annotation stores, and the
    mask is rasterized from it.
    """
    r = shape_radius(shape, size)
    if shape == "circle":
        t = np.linspace(0.0, 2.0 * np.pi, _CIRCLE_VERTICES, endpoint=False)
        radii = np.full_like(t, r)
    elif shape == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full_like(t, r)
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2.0 * np.pi / 3
        radii = np.full_like(t, r)
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * _STAR_INNER_RATIO)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    t = t + angle
    xy = np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)
    return np.round(xy, 2)


def rasterize_polygon(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary mask (H, W) bool of a polygon (P, 2), as pycocotools decodes the same polygon annotation."""
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def encode_mask(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a (H, W) bool mask; ``counts`` as a utf-8 str so it is JSON-ready."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("utf-8")}
