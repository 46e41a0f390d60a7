"""Box conversions, IoU and generalized IoU, and boxes of masks.

Boxes are float tensors whose last dimension holds 4 coordinates: ``cxcywh`` (centre x, centre y,
width, height) or ``xyxy`` (left, top, right, bottom). Pairwise functions broadcast over leading
batch dimensions: ``a`` ...×N×4 and ``b`` ...×M×4 give ...×N×M.
"""

from __future__ import annotations

import torch

# Keeps divisions finite for degenerate (zero-area) boxes.
_EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """...×4 (cx, cy, w, h) → ...×4 (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """...×4 (x0, y0, x1, y1) → ...×4 (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """...×4 xyxy → ... areas (0 for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of xyxy boxes: ...×N×4, ...×M×4 → (iou ...×N×M, union ...×N×M)."""
    area_a = box_area(a)[..., :, None]
    area_b = box_area(b)[..., None, :]
    top_left = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])  # ...×N×M×2
    bottom_right = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    return inter / union.clamp(min=_EPS), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU of xyxy boxes: ...×N×4, ...×M×4 → ...×N×M, in [-1, 1]."""
    iou, union = box_iou(a, b)
    top_left = torch.minimum(a[..., :, None, :2], b[..., None, :, :2])
    bottom_right = torch.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
    hull = (bottom_right - top_left).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=_EPS)


def elementwise_box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of matching pairs of xyxy boxes: ...×4, ...×4 → (iou ..., union ...)."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=_EPS), union


def elementwise_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matching pairs of xyxy boxes: ...×4, ...×4 → ..., in [-1, 1]."""
    iou, union = elementwise_box_iou(a, b)
    top_left = torch.minimum(a[..., :2], b[..., :2])
    bottom_right = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (bottom_right - top_left).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=_EPS)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes of binary masks, in pixels: N×H×W → N×4.

    A pixel (x, y) covers [x, x+1)×[y, y+1), so a box's right/bottom edge is the last set column/row
    plus one and dividing by (W, H, W, H) gives normalized coordinates. Empty masks give zero boxes.
    """
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, device=masks.device, dtype=torch.float32)
    height, width = masks.shape[-2:]
    filled = masks > 0 if masks.dtype != torch.bool else masks
    ys = torch.arange(height, device=masks.device, dtype=torch.float32)
    xs = torch.arange(width, device=masks.device, dtype=torch.float32)
    rows = filled.any(dim=2)  # N×H
    cols = filled.any(dim=1)  # N×W
    big = float(max(height, width))
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs + 1, 0.0).amax(dim=1)
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys + 1, 0.0).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return torch.where(cols.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))
