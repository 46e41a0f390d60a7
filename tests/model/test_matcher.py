"""Hungarian matcher (and the box ops it relies on)."""

import pytest
import torch
import torchvision

from unip2.model.box_ops import (box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, elementwise_generalized_box_iou,
                                 generalized_box_iou, masks_to_boxes)
from unip2.model.matcher import HungarianMatcher

SIZE = 32  # target mask resolution; predicted masks are SIZE/4


def make_matcher(mask_points=0):
    return HungarianMatcher(cost_objectness=2.0, cost_box_l1=5.0, cost_giou=2.0, cost_mask=5.0, cost_dice=5.0,
                            focal_alpha=0.25, focal_gamma=2.0, mask_points=mask_points)


def random_boxes(n, gen):
    centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centre, size], dim=-1)


def box_masks(boxes):
    """N×SIZE×SIZE bool masks filling each cxcywh box."""
    coords = (torch.arange(SIZE) + 0.5) / SIZE
    x0, y0, x1, y1 = box_cxcywh_to_xyxy(boxes).unbind(-1)
    inside_x = (coords[None] >= x0[:, None]) & (coords[None] <= x1[:, None])
    inside_y = (coords[None] >= y0[:, None]) & (coords[None] <= y1[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


def permuted_problem(sizes, queries=12, seed=0):
    """Targets per image, and outputs whose queries perm[i] copy target i; other queries are noise."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(sizes)
    objectness = torch.full((batch, queries), -4.0)
    boxes = random_boxes(batch * queries, gen).view(batch, queries, 4)
    masks = torch.full((batch, queries, SIZE // 4, SIZE // 4), -6.0)
    targets, perms = [], []
    for b, n in enumerate(sizes):
        t_boxes = random_boxes(n, gen)
        t_masks = box_masks(t_boxes)
        perm = torch.randperm(queries, generator=gen)[:n]
        boxes[b, perm] = t_boxes
        objectness[b, perm] = 4.0
        small = torch.nn.functional.interpolate(t_masks[:, None].float(), size=(SIZE // 4, SIZE // 4), mode="area")
        masks[b, perm] = (small[:, 0] - 0.5) * 20
        targets.append({"boxes": t_boxes, "masks": t_masks})
        perms.append(perm)
    return {"objectness": objectness, "boxes": boxes, "masks": masks}, targets, perms


@pytest.mark.parametrize("mask_points", [0, 64])
@pytest.mark.parametrize("with_masks", [True, False])
def test_recovers_permutation(mask_points, with_masks):
    outputs, targets, perms = permuted_problem([3, 0, 5, 1])
    if not with_masks:
        targets = [{"boxes": t["boxes"]} for t in targets]
    indices = make_matcher(mask_points)(outputs, targets)
    assert len(indices) == 4
    for (src, tgt), perm, target in zip(indices, perms, targets):
        assert src.dtype == tgt.dtype == torch.long
        assert len(src) == len(tgt) == len(target["boxes"])
        assert torch.equal(src.sort().values, src)
        assert torch.equal(perm[tgt], src)  # query src[k] is the copy of target tgt[k]


def test_batched_costs_equal_per_image_costs():
    outputs, targets, _ = permuted_problem([2, 4, 0, 3], seed=1)
    outputs = {k: v + 0.3 * torch.randn_like(v) for k, v in outputs.items()}
    matcher = make_matcher()
    batched = matcher.cost_matrix(outputs, targets)
    for b, target in enumerate(targets):
        single = matcher.cost_matrix({k: v[b:b + 1] for k, v in outputs.items()}, [target])
        n = len(target["boxes"])
        torch.testing.assert_close(batched[b, :, :n], single[0, :, :n])


def test_zero_targets_everywhere():
    outputs, targets, _ = permuted_problem([0, 0])
    indices = make_matcher()(outputs, targets)
    for src, tgt in indices:
        assert src.numel() == tgt.numel() == 0 and src.dtype == torch.long


def test_more_targets_than_queries():
    outputs, targets, _ = permuted_problem([2], queries=4)
    targets = [{"boxes": torch.cat([targets[0]["boxes"], random_boxes(5, torch.Generator().manual_seed(3))])}]
    src, tgt = make_matcher()(outputs, targets)[0]
    assert len(src) == 4 and len(set(tgt.tolist())) == 4


def test_box_ops_against_torchvision():
    gen = torch.Generator().manual_seed(0)
    a, b = box_cxcywh_to_xyxy(random_boxes(5, gen)), box_cxcywh_to_xyxy(random_boxes(7, gen))
    torch.testing.assert_close(box_iou(a, b)[0], torchvision.ops.box_iou(a, b))
    torch.testing.assert_close(generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))
    batched = generalized_box_iou(torch.stack([a, a]), torch.stack([b, b]))
    torch.testing.assert_close(batched[1], torchvision.ops.generalized_box_iou(a, b))
    torch.testing.assert_close(elementwise_generalized_box_iou(a, b[:5]),
                               torchvision.ops.generalized_box_iou(a, b[:5]).diagonal())
    boxes = random_boxes(4, gen)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    masks = box_masks(random_boxes(3, gen))
    masks = torch.cat([masks, torch.zeros(1, SIZE, SIZE, dtype=torch.bool)])
    expected = torchvision.ops.masks_to_boxes(masks[:3]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(masks_to_boxes(masks)[:3], expected)
    assert masks_to_boxes(masks)[3].abs().sum() == 0
