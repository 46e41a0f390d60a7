"""Hungarian matching of proposals to ground-truth objects (DETR / Mask2Former costs).

cost = w_obj·focal objectness cost + w_l1·L1(box) − w_giou·GIoU(box) + w_mask·BCE(mask) + w_dice·dice(mask)

The cost matrices of the whole batch are computed as one padded B×Q×T_max tensor op, copied to the
CPU once, and split per image for ``scipy.optimize.linear_sum_assignment``. Mask costs are used when
the outputs have ``masks`` and every target has ``masks``; they compare the masks either densely
(targets resized to the prediction's resolution) or at ``mask_points`` uniform random points shared by
the predictions and targets of an image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from unip2.config import ProposalConfig
from unip2.model.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

_EPS = 1e-8


def point_sample(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of masks at points: N×C×H×W, N×P×2 ((x, y) in [0, 1]) → N×C×P.

    Points are in the masks' normalized frame, so maps of different resolutions are read at the
    same places.
    """
    grid = (2 * points - 1).unsqueeze(2).to(masks.dtype)  # N×P×1×2
    return F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(-1)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×C×H×W → N×C×size: area averaging when shrinking (no aliasing), bilinear when growing."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]:
        return F.interpolate(masks, size=size, mode="area")
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def mask_costs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise mean BCE and dice costs: logits B×Q×P, targets B×T×P in [0, 1] → (B×Q×T, B×Q×T)."""
    points = logits.shape[-1]
    # BCE(x, t) summed over points = Σ softplus(x) − x·t, so the pairwise part is one matmul.
    bce = (F.softplus(logits).sum(-1, keepdim=True) - logits @ targets.transpose(1, 2)) / points
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.transpose(1, 2)
    denominator = probs.sum(-1)[:, :, None] + targets.sum(-1)[:, None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets per image.

    forward(outputs, targets) → list (per image) of (src_idx, tgt_idx), CPU long tensors of equal
    length min(Q, N_i), src_idx ascending.
        outputs: objectness B×Q logits, boxes B×Q×4 normalized cxcywh, optional masks B×Q×h×w logits
        targets: per image {boxes N×4 normalized cxcywh, optional masks N×H×W (same H×W for the batch)}
    """

    def __init__(self, *, cost_objectness: float, cost_box_l1: float, cost_giou: float, cost_mask: float,
                 cost_dice: float, focal_alpha: float, focal_gamma: float, mask_points: int):
        super().__init__()
        self.cost_objectness, self.cost_box_l1, self.cost_giou = cost_objectness, cost_box_l1, cost_giou
        self.cost_mask, self.cost_dice = cost_mask, cost_dice
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.mask_points = mask_points

    @classmethod
    def from_config(cls, cfg: ProposalConfig) -> "HungarianMatcher":
        return cls(cost_objectness=cfg.cost_objectness, cost_box_l1=cfg.cost_box_l1, cost_giou=cfg.cost_giou,
                   cost_mask=cfg.cost_mask, cost_dice=cfg.cost_dice, focal_alpha=cfg.focal_alpha,
                   focal_gamma=cfg.focal_gamma, mask_points=cfg.mask_loss_points)

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> torch.Tensor:
        """B×Q×T_max matching costs; columns past an image's own N_i are padding."""
        logits = outputs["objectness"].float()
        boxes = outputs["boxes"].float()
        # Padding boxes are valid boxes so no NaN appears in the unused columns.
        target_boxes = pad_sequence([t["boxes"].to(boxes) for t in targets], batch_first=True,
                                    padding_value=0.5)  # B×T×4

        prob = logits.sigmoid()
        positive = self.focal_alpha * (1 - prob) ** self.focal_gamma * -(prob + _EPS).log()
        negative = (1 - self.focal_alpha) * prob ** self.focal_gamma * -(1 - prob + _EPS).log()
        cost = self.cost_objectness * (positive - negative)[:, :, None]
        cost = cost + self.cost_box_l1 * torch.cdist(boxes, target_boxes, p=1)
        cost = cost - self.cost_giou * generalized_box_iou(box_cxcywh_to_xyxy(boxes),
                                                           box_cxcywh_to_xyxy(target_boxes))
        if "masks" in outputs and all("masks" in t for t in targets):
            pred = outputs["masks"].float()  # B×Q×h×w
            target_masks = pad_sequence([t["masks"].to(pred) for t in targets], batch_first=True)  # B×T×H×W
            if self.mask_points > 0:
                points = torch.rand(pred.shape[0], self.mask_points, 2, device=pred.device)
                pred, target_masks = point_sample(pred, points), point_sample(target_masks, points)
            else:
                target_masks = resize_masks(target_masks, pred.shape[-2:])
                pred, target_masks = pred.flatten(2), target_masks.flatten(2)
            bce, dice = mask_costs(pred, target_masks)
            cost = cost + self.cost_mask * bce + self.cost_dice * dice
        return cost

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.long)
        if max(sizes, default=0) == 0:
            return [(empty, empty.clone()) for _ in sizes]
        # scipy.optimize takes 0.2 s to import: only training needs it, not every process that imports the tasks
        from scipy.optimize import linear_sum_assignment

        cost = self.cost_matrix(outputs, targets).cpu().numpy()
        indices = []
        for image, size in enumerate(sizes):
            if size == 0:
                indices.append((empty, empty.clone()))
                continue
            rows, cols = linear_sum_assignment(cost[image, :, :size])
            indices.append((torch.as_tensor(rows, dtype=torch.long),
                            torch.as_tensor(cols.astype(np.int64), dtype=torch.long)))
        return indices
