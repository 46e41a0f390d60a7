"""Losses of the region proposal network (DETR lineage), as named, unweighted terms.

Per supervised output (final layer, each earlier decoder layer ``_aux{i}``, the selected encoder
proposals ``_enc``), after its own Hungarian matching:

    loss_objectness  sigmoid focal loss over all queries, matched = foreground
    loss_box_l1      L1 of matched normalized cxcywh boxes
    loss_giou        1 − GIoU of matched boxes
    loss_mask        mean BCE of matched masks
    loss_dice        dice loss of matched masks

With denoising queries (``outputs["denoising"]``, training only) every decoder layer's denoising queries add the
same terms, suffixed ``_dn`` (final layer) and ``_dn_aux{i}``, each query matched to the box it was noised from
instead of by the Hungarian matcher; they are divided by the number of target boxes times the number of groups.

Every term is a sum over the batch divided by the number of target boxes in the batch (at least 1),
so images without objects only push their queries to background. Mask terms are skipped (absent from
the dict) when a target lacks ``masks`` or the outputs have none. With ``mask_points`` > 0 masks are
compared at points chosen as in Mask2Former: most where the predicted logit is near 0 (uncertain),
the rest uniform; with 0 the predicted logits are upsampled to the target resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unip2.config import ProposalConfig
from unip2.model.box_ops import box_cxcywh_to_xyxy, elementwise_generalized_box_iou
from unip2.model.matcher import HungarianMatcher, point_sample, resize_masks

TERMS = ("loss_objectness", "loss_box_l1", "loss_giou", "loss_mask", "loss_dice")


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet): logits, targets of the same shape → same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask dice loss: N×P logits, N×P targets in [0, 1] → N."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def uncertain_points(logits: torch.Tensor, num_points: int, *, oversample_ratio: float,
                     importance_ratio: float) -> torch.Tensor:
    """Points concentrated where mask logits are uncertain: N×h×w logits → N×num_points×2 in [0, 1].

    oversample_ratio·num_points uniform candidates are ranked by −|logit|; the most uncertain
    importance_ratio·num_points are kept and the rest are fresh uniform points.
    """
    count = logits.shape[0]
    candidates = torch.rand(count, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits.unsqueeze(1), candidates).squeeze(1).abs()  # N×P'
    num_uncertain = int(importance_ratio * num_points)
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    picked = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    uniform = torch.rand(count, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([picked, uniform], dim=1)


class ProposalCriterion(nn.Module):
    """Matching + losses for the RPN outputs (see the module docstring).

    forward(outputs, targets) → (losses, indices)
        outputs: the RegionProposalNetwork dict (objectness, boxes, optional masks, optional
            aux_outputs list and enc_outputs dict of the same keys)
        targets: per image {boxes N×4 normalized cxcywh, optional masks N×H×W bool/float, H×W the
            padded input resolution, the same for the whole batch}
        losses: {term name: 0-d tensor}, unweighted; names as in ``weights()``
        indices: the final layer's matching, per image (src_idx, tgt_idx) CPU long tensors
    """

    def __init__(self, *, matcher: HungarianMatcher, weight_objectness: float, weight_box_l1: float,
                 weight_giou: float, weight_mask: float, weight_dice: float, focal_alpha: float,
                 focal_gamma: float, mask_points: int, num_aux_layers: int, denoising: bool = False,
                 oversample_ratio: float = 3.0, importance_ratio: float = 0.75):
        super().__init__()
        self.matcher = matcher
        self.term_weights = dict(zip(TERMS, (weight_objectness, weight_box_l1, weight_giou, weight_mask,
                                             weight_dice)))
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.mask_points = mask_points
        self.num_aux_layers = num_aux_layers
        self.denoising = denoising
        self.oversample_ratio, self.importance_ratio = oversample_ratio, importance_ratio

    @classmethod
    def from_config(cls, cfg: ProposalConfig) -> "ProposalCriterion":
        return cls(matcher=HungarianMatcher.from_config(cfg), weight_objectness=cfg.weight_objectness,
                   weight_box_l1=cfg.weight_box_l1, weight_giou=cfg.weight_giou, weight_mask=cfg.weight_mask,
                   weight_dice=cfg.weight_dice, focal_alpha=cfg.focal_alpha, focal_gamma=cfg.focal_gamma,
                   mask_points=cfg.mask_loss_points, num_aux_layers=cfg.decoder_layers - 1,
                   denoising=cfg.denoising_queries > 0)

    def weights(self) -> dict[str, float]:
        """Weight of every term name forward may return (final, ``_aux{i}`` and ``_enc`` variants)."""
        suffixes = [""] + [f"_aux{i}" for i in range(self.num_aux_layers)] + ["_enc"]
        if self.denoising:
            suffixes += ["_dn"] + [f"_dn_aux{i}" for i in range(self.num_aux_layers)]
        return {term + suffix: weight for suffix in suffixes for term, weight in self.term_weights.items()}

    def forward(self, outputs: dict, targets: list[dict]) -> tuple[dict[str, torch.Tensor],
                                                                   list[tuple[torch.Tensor, torch.Tensor]]]:
        num_boxes = float(max(sum(len(t["boxes"]) for t in targets), 1))
        indices = self.matcher(outputs, targets)
        losses = self._losses(outputs, targets, indices, num_boxes, "")
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update(self._losses(aux, targets, self.matcher(aux, targets), num_boxes, f"_aux{i}"))
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            losses.update(self._losses(enc, targets, self.matcher(enc, targets), num_boxes, "_enc"))
        if "denoising" in outputs:
            losses.update(self._denoising_losses(outputs["denoising"], targets, num_boxes))
        return losses, indices

    def _denoising_losses(self, denoising: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
        """Each layer's denoising queries against the boxes they were noised from (module docstring)."""
        layers, matches = denoising["layers"], denoising["matches"]
        suffixes = [f"_dn_aux{i}" for i in range(len(layers) - 1)] + ["_dn"]
        losses = {}
        for layer, suffix in zip(layers, suffixes):
            losses.update(self._losses(layer, targets, matches, num_boxes * denoising["groups"], suffix))
        return losses

    def _losses(self, outputs: dict, targets: list[dict], indices: list[tuple[torch.Tensor, torch.Tensor]],
                num_boxes: float, suffix: str) -> dict[str, torch.Tensor]:
        logits = outputs["objectness"].float()  # B×Q
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)

        foreground = torch.zeros_like(logits)
        foreground[batch_idx, src_idx] = 1.0
        focal = sigmoid_focal_loss(logits, foreground, alpha=self.focal_alpha, gamma=self.focal_gamma)
        losses = {"loss_objectness": focal.sum() / num_boxes}

        src_boxes = outputs["boxes"].float()[batch_idx, src_idx]  # M×4
        target_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, indices)])
        target_boxes = target_boxes.to(src_boxes)
        losses["loss_box_l1"] = (src_boxes - target_boxes).abs().sum() / num_boxes
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        losses["loss_giou"] = (1 - giou).sum() / num_boxes

        if "masks" in outputs and all("masks" in t for t in targets):
            losses.update(self._mask_losses(outputs["masks"], targets, indices, batch_idx, src_idx, num_boxes))
        return {name + suffix: value for name, value in losses.items()}

    def _mask_losses(self, masks: torch.Tensor, targets: list[dict], indices: list, batch_idx: torch.Tensor,
                     src_idx: torch.Tensor, num_boxes: float) -> dict[str, torch.Tensor]:
        src = masks.float()[batch_idx, src_idx]  # M×h×w
        if src.shape[0] == 0:  # nothing matched: zero terms that still belong to the graph
            zero = masks.float().sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        target = torch.cat([t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)])
        target = target.to(src).unsqueeze(1)  # M×1×H×W
        if self.mask_points > 0:
            points = uncertain_points(src, self.mask_points, oversample_ratio=self.oversample_ratio,
                                      importance_ratio=self.importance_ratio)
            src = point_sample(src.unsqueeze(1), points).squeeze(1)  # M×P
            target = point_sample(target, points).squeeze(1)
        else:
            src = resize_masks(src.unsqueeze(1), target.shape[-2:]).flatten(1)  # M×(H·W)
            target = target.flatten(1)
        bce = F.binary_cross_entropy_with_logits(src, target, reduction="none").mean(1)
        return {"loss_mask": bce.sum() / num_boxes, "loss_dice": dice_loss(src, target).sum() / num_boxes}
