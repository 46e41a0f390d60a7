"""Shapes-world scenes: where the objects go, what stays visible, and the painted RGB image.

Objects are painted bottom to top; an object's *visible* mask is its own mask minus every object above
it. Placement is retried until every object keeps at least ``min_visible`` of its pixels, so each
instance has a real visible mask and its box is the tight box of that mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unip2.data.shapes import CATEGORIES, COLOUR_RGB, Category, rasterize_polygon, shape_polygon, shape_radius

# Object sizes as fractions of the image side: bimodal so "small" and "large" in captions are clear-cut.
# At 112 px: small 14-24 px, large 34-50 px.
SMALL_SIZE = (0.125, 0.215)
LARGE_SIZE = (0.30, 0.45)
# Classification: one dominant object and up to two small distractors of other categories under it.
DOMINANT_SIZE = (0.40, 0.62)
DISTRACTOR_SIZE = (0.10, 0.17)


@dataclass
class PlacedObject:
    """One painted object. Masks are (H, W) bool; ``polygon`` is (P, 2) xy pixels."""

    category: Category
    size_word: str  # "small" or "large"
    cx: float
    cy: float
    polygon: np.ndarray
    mask: np.ndarray  # every pixel of the shape
    visible: np.ndarray  # the pixels not covered by objects painted later


@dataclass
class Scene:
    """Objects bottom to top on a background (H, W, 3) float32 whose tone is "dark" or "light"."""

    objects: list[PlacedObject]
    background: np.ndarray
    tone: str


def sample_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A muted two-colour gradient with low-frequency blotches: (H, W, 3) float32 and its tone word."""
    tone = "dark" if rng.random() < 0.5 else "light"
    level = rng.uniform(30, 90) if tone == "dark" else rng.uniform(160, 225)
    start = level + rng.normal(0.0, 12.0, 3)
    end = start + rng.normal(0.0, 14.0, 3)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (np.cos(theta) * xs + np.sin(theta) * ys)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = start[None, None, :] + (end - start)[None, None, :] * t[..., None]
    # Blotches: a coarse 4x4 random grid, bilinearly upsampled.
    blotches = _upsample_bilinear(rng.normal(0.0, 8.0, (4, 4, 3)), size)
    return (image + blotches).astype(np.float32), tone


def _upsample_bilinear(grid: np.ndarray, size: int) -> np.ndarray:
    """(g, g, C) -> (size, size, C) by separable linear interpolation."""
    g = grid.shape[0]
    pos = np.clip((np.arange(size) + 0.5) / size * g - 0.5, 0.0, g - 1.0)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, g - 1)
    w = (pos - i0)[:, None, None]
    rows = grid[i0] * (1.0 - w) + grid[i1] * w  # (size, g, C)
    w = w.reshape(1, size, 1)
    return rows[:, i0] * (1.0 - w) + rows[:, i1] * w


def _sample_object(rng: np.random.Generator, size: int, *, category: Category, size_range: tuple[float, float],
                   centre_box: tuple[float, float] | None = None) -> PlacedObject:
    extent = rng.uniform(*size_range) * size
    r = shape_radius(category.shape, extent)
    lo, hi = r + 1.0, size - 1.0 - r
    if centre_box is not None:
        lo, hi = max(lo, centre_box[0] * size), min(hi, centre_box[1] * size)
    cx, cy = rng.uniform(lo, max(lo, hi)), rng.uniform(lo, max(lo, hi))
    polygon = shape_polygon(category.shape, cx, cy, extent, rng.uniform(0.0, 2.0 * np.pi))
    mask = rasterize_polygon(polygon, size, size)
    size_word = "small" if size_range[1] <= SMALL_SIZE[1] else "large"
    return PlacedObject(category=category, size_word=size_word, cx=cx, cy=cy, polygon=polygon,
                        mask=mask, visible=mask.copy())


def sample_detection_scene(rng: np.random.Generator, *, size: int, min_objects: int = 1, max_objects: int = 4,
                           min_visible: float = 0.6, tries: int = 30) -> Scene:
    """1-4 objects of random categories and sizes; every object keeps >= ``min_visible`` of its mask.

    An object that cannot be placed within ``tries`` attempts is left out, so a scene may hold fewer
    objects than drawn (never fewer than one: the first always fits).
    """
    background, tone = sample_background(rng, size)
    count = int(rng.integers(min_objects, max_objects + 1))
    objects: list[PlacedObject] = []
    for _ in range(count):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        size_range = SMALL_SIZE if rng.random() < 0.5 else LARGE_SIZE
        for _attempt in range(tries):
            new = _sample_object(rng, size, category=category, size_range=size_range)
            still_visible = [obj.visible & ~new.mask for obj in objects]
            if all(v.sum() >= min_visible * obj.mask.sum() for v, obj in zip(still_visible, objects)):
                for obj, v in zip(objects, still_visible):
                    obj.visible = v
                objects.append(new)
                break
    return Scene(objects=objects, background=background, tone=tone)


def sample_classification_scene(rng: np.random.Generator, *, size: int, category: Category,
                                max_distractors: int = 2) -> Scene:
    """One large object of ``category`` near the centre, over 0-2 small objects of other categories."""
    background, tone = sample_background(rng, size)
    others = [c for c in CATEGORIES if c != category]
    objects = []
    for _ in range(int(rng.integers(0, max_distractors + 1))):
        other = others[int(rng.integers(len(others)))]
        objects.append(_sample_object(rng, size, category=other, size_range=DISTRACTOR_SIZE))
    dominant = _sample_object(rng, size, category=category, size_range=DOMINANT_SIZE, centre_box=(0.3, 0.7))
    for obj in objects:
        obj.visible = obj.visible & ~dominant.mask
    objects.append(dominant)
    return Scene(objects=objects, background=background, tone=tone)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Paint the scene: (H, W, 3) uint8. Each object gets a jittered colour and a soft shading ramp."""
    image = scene.background.copy()
    size = image.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for obj in scene.objects:
        colour = np.asarray(COLOUR_RGB[obj.category.colour], dtype=np.float32) + rng.normal(0.0, 10.0, 3)
        # Shading: brightness changes linearly across the object, up to about +-12%.
        theta = rng.uniform(0.0, 2.0 * np.pi)
        ramp = 1.0 + 0.12 * (np.cos(theta) * (xs - obj.cx) + np.sin(theta) * (ys - obj.cy)) / (size / 4)
        shaded = colour[None, :] * np.clip(ramp[obj.mask], 0.8, 1.2)[:, None]
        image[obj.mask] = shaded
    image += rng.normal(0.0, rng.uniform(2.0, 9.0), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
