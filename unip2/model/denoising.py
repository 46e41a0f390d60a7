"""Denoising queries (DN-DETR / DINO / MaskDINO) for the region proposal network, class-agnostic.

During training the query decoder also gets noised copies of the ground-truth boxes. Each such query
starts from its noised box and has to reconstruct the box (and mask) it came from, so the decoder
learns box refinement from step one instead of waiting for the Hungarian matching to settle: the
matching of the selected proposals is unstable early on, which is what slows DETR-like training.

Layout of the decoder's queries with denoising: ``[group 0 | group 1 | ... | group G-1 | matching]``.
Every group holds one slot per ground-truth box, padded to the batch's largest image (``slots``).
Attention: a matching query sees only matching queries (they must not learn from the answers); a
denoising query sees its own group and the matching queries; a padding slot is seen by no one.

Our proposals have no classes, so a denoising query's content is one learned embedding (MaskDINO
noises the class label too; here there is none to noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unip2.model.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh


@dataclass
class DenoisingQueries:
    """reference: B×(G·slots)×4 noised cxcywh boxes in (0, 1); valid: B×(G·slots) bool (a real box, not
    padding); attention_mask: B×T×T bool over the decoder's T = G·slots + Q queries, True = may NOT attend
    (nn.MultiheadAttention's convention); groups, slots as in the module docstring."""

    reference: torch.Tensor
    valid: torch.Tensor
    attention_mask: torch.Tensor
    groups: int
    slots: int
    counts: tuple[int, ...] = ()
    """Boxes of each image (the valid slots of each group are its first ``counts[b]``)."""

    @property
    def count(self) -> int:
        return self.groups * self.slots

    def matches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (query index, target index), CPU long: every valid slot of every group is matched to the
        box it was made from (no Hungarian matching). Built from the box counts, on the host: nothing is read
        back from the device."""
        out = []
        for count in self.counts:
            queries = torch.tensor([g * self.slots + i for g in range(self.groups) for i in range(count)],
                                   dtype=torch.long)
            out.append((queries, queries % self.slots))
        return out


def noised_boxes(boxes: torch.Tensor, noise: float) -> torch.Tensor:
    """N×4 cxcywh → N×4 cxcywh: each side moved by up to ``noise`` × half the box's width / height (DINO)."""
    xyxy = box_cxcywh_to_xyxy(boxes)
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], dim=1) / 2
    shift = (torch.rand_like(xyxy) * 2 - 1) * half * noise
    xyxy = (xyxy + shift).clamp(0.0, 1.0)
    out = box_xyxy_to_cxcywh(xyxy)
    return out.clamp(min=1e-3, max=1 - 1e-3)  # a usable inverse sigmoid and a non-empty box


def denoising_queries(targets: list[dict], *, budget: int, noise: float, num_matching: int,
                      device: torch.device) -> DenoisingQueries | None:
    """Groups of noised ground-truth boxes for a batch, or None when the batch has no boxes.

    targets: per image {"boxes": N×4 normalized cxcywh}; budget: total denoising queries wanted per image
    (G = budget // the largest box count, at least 1); num_matching: the Q matching queries after them.
    """
    counts = [len(t["boxes"]) for t in targets]
    slots = max(counts, default=0)
    if slots == 0:
        return None
    groups = max(1, budget // slots)
    batch, count = len(targets), groups * slots
    reference = torch.full((batch, count, 4), 0.5, device=device)
    valid = torch.zeros(batch, count, dtype=torch.bool, device=device)
    for b, target in enumerate(targets):
        n = counts[b]
        if n == 0:
            continue
        boxes = target["boxes"].to(device=device, dtype=torch.float32)
        for g in range(groups):
            reference[b, g * slots:g * slots + n] = noised_boxes(boxes, noise)
            valid[b, g * slots:g * slots + n] = True
    return DenoisingQueries(reference, valid, attention_mask(valid, groups, slots, num_matching), groups, slots,
                            tuple(counts))


def attention_mask(valid: torch.Tensor, groups: int, slots: int, num_matching: int) -> torch.Tensor:
    """B×T×T bool, True = blocked, T = groups·slots + num_matching (see the module docstring)."""
    batch, count = valid.shape
    total = count + num_matching
    group_of = torch.arange(count, device=valid.device) // slots
    blocked = torch.ones(total, total, dtype=torch.bool, device=valid.device)
    blocked[:count, :count] = group_of[:, None] != group_of[None, :]  # denoising: own group only
    blocked[:count, count:] = False  # denoising queries see the matching queries
    blocked[count:, count:] = False  # matching queries see each other, never a denoising query
    blocked = blocked.unsqueeze(0).repeat(batch, 1, 1)
    blocked[:, :, :count] |= ~valid[:, None, :]  # padding slots are seen by no one ...
    eye = torch.eye(total, dtype=torch.bool, device=valid.device)
    return blocked & ~eye  # ... but every query sees itself, so no row is empty
