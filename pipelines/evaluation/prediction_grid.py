"""A picture of predictions: a grid of validation images with boxes, translucent masks, labels, scores
and the generated caption under each image (matplotlib, Agg backend).

``grid_panels`` picks the images and gathers what to draw on each from the tasks' predictions, by the
prediction format (``boxes``/``masks``, ``caption``, ``top_names``), not by task name:
- images come from the dataset of the first task predicting boxes (else captions, else class names);
  the one with masks is preferred for the boxes;
- a caption is matched to an image by ``image_id`` (detection and caption data both use COCO ids);
  images that have one come first.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


@dataclass
class Panel:
    """One image and what to draw on it. Boxes are [x, y, w, h] in the image's pixels."""

    image: bytes
    title: str
    boxes: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    masks: list[dict] | None = None
    """COCO RLE per box, or None."""
    lines: list[str] = field(default_factory=list)
    """Text under the image (e.g. the caption)."""


def grid_panels(predictions: dict[str, list[dict]], load_images: Callable[[str, list[int]], dict[int, bytes]],
                datasets: dict[str, str], max_panels: int = 9) -> list[Panel]:
    """Panels for up to ``max_panels`` images.

    Args:
        predictions: {task name: its (decodable) predictions}.
        load_images: (dataset, image ids) → {image_id: encoded bytes}.
        datasets: {task name: dataset it reads}.
    """
    def first_with(key: str) -> str | None:
        return next((name for name, preds in predictions.items() if preds and key in preds[0]), None)

    source = first_with("masks") or first_with("boxes") or first_with("caption") or first_with("top_names")
    if source is None:
        return []
    dataset = datasets[source]
    captions = {int(p["image_id"]): p["caption"] for preds in predictions.values() for p in preds if "caption" in p}
    classes = {int(p["image_id"]): p for name, preds in predictions.items() if datasets[name] == dataset
               for p in preds if "top_names" in p}
    ids = [int(p["image_id"]) for p in predictions[source]]
    ids = sorted(ids, key=lambda i: i not in captions)[:max_panels]
    images = load_images(dataset, ids)
    objects = {int(p["image_id"]): p for p in predictions[source] if "boxes" in p}
    panels = []
    for image_id in ids:
        if image_id not in images:
            continue
        panel = Panel(image=images[image_id], title=f"image {image_id}")
        if image_id in objects:
            found = objects[image_id]
            panel.boxes, panel.names, panel.scores = found["boxes"], found["names"], found["scores"]
            panel.masks = found.get("masks")
        if image_id in classes:
            top = classes[image_id]
            panel.title += f" · {top['top_names'][0]} {top['top_scores'][0]:.2f}"
        if image_id in captions:
            panel.lines.append(f'"{captions[image_id]}"')
        panels.append(panel)
    return panels


def draw_prediction_grid(panels: list[Panel], path: str | Path, *, columns: int = 3, score_threshold: float = 0.3,
                         max_boxes: int = 5) -> Path:
    """Draw ``panels`` in a grid and save a PNG.

    On each image: the detections scoring at least ``score_threshold``, at most ``max_boxes``; when none
    does, the best one's box dashed and marked "(< threshold)", without its mask (so an untrained model's
    output stays visible without covering the image).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        image = np.asarray(Image.open(io.BytesIO(panel.image)).convert("RGB"))
        ax.imshow(image)
        order = [i for i in np.argsort(panel.scores)[::-1] if panel.scores[i] >= score_threshold][:max_boxes]
        faint = not order and len(panel.scores) > 0
        if faint:
            order = [int(np.argmax(panel.scores))]
        for rank, index in enumerate(order):
            color = COLORS[rank % len(COLORS)]
            if panel.masks is not None and not faint:
                ax.imshow(_overlay(mask_utils.decode(panel.masks[index]), color))
            x, y, w, h = panel.boxes[index]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=2,
                                   linestyle="--" if faint else "-"))
            label = f"{panel.names[index]} {panel.scores[index]:.2f}" + (f" (< {score_threshold:g})" if faint else "")
            ax.text(x, y, label, fontsize=8, color="white", va="bottom",
                    bbox=dict(facecolor=color, alpha=0.8, pad=1, edgecolor="none"))
        ax.set_title(panel.title, fontsize=9)
        if panel.lines:
            text = "\n".join(textwrap.fill(_printable(line), 48) for line in panel.lines)
            ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _overlay(mask: np.ndarray, color: str, alpha: float = 0.35) -> np.ndarray:
    """H×W binary mask → H×W×4 RGBA, ``color`` where the mask is set, transparent elsewhere."""
    from matplotlib.colors import to_rgb

    rgba = np.zeros(mask.shape + (4,), dtype=np.float32)
    rgba[..., :3] = to_rgb(color)
    rgba[..., 3] = (mask > 0) * alpha
    return rgba


def _printable(text: str) -> str:
    """Generated text can hold control characters (an early model's byte tokens) that no font draws."""
    return "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)
