"""The proposal network's denoising queries: their layout, attention mask, losses and what they leave alone."""

import dataclasses

import torch

from unip2.model.box_ops import box_cxcywh_to_xyxy
from unip2.model.denoising import attention_mask, denoising_queries, noised_boxes
from unip2.model.proposal_criterion import ProposalCriterion
from unip2.model.proposals import RegionProposalNetwork
from tests.model.test_proposals import CHANNELS, features, make_targets, tiny_config, total_loss


def test_noised_boxes_move_each_side_by_at_most_the_noise_times_half_the_size():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(500, 1)
    noised = noised_boxes(boxes, 0.4)
    shift = (box_cxcywh_to_xyxy(noised) - box_cxcywh_to_xyxy(boxes)).abs()
    limit = torch.tensor([0.04, 0.08, 0.04, 0.08])
    assert (shift <= limit + 1e-6).all()
    assert (shift.amax(0) > 0.9 * limit).all()  # the noise uses its whole range
    assert not torch.equal(noised[0], noised[1])


def test_groups_fill_the_budget_and_pad_the_smaller_images():
    targets = make_targets([3, 1, 0])
    dn = denoising_queries(targets, budget=10, noise=0.4, num_matching=5, device=torch.device("cpu"))
    assert (dn.groups, dn.slots, dn.count) == (3, 3, 9)
    assert dn.valid.sum(1).tolist() == [9, 3, 0]
    assert dn.valid[1].tolist() == [True, False, False] * 3
    queries, boxes = dn.matches()[1]
    assert queries.tolist() == [0, 3, 6] and boxes.tolist() == [0, 0, 0]
    assert denoising_queries(make_targets([0, 0]), budget=10, noise=0.4, num_matching=5,
                             device=torch.device("cpu")) is None


def test_attention_mask_hides_the_answers_from_matching_queries_and_groups_from_each_other():
    valid = torch.tensor([[True, False, True, False]])  # 2 groups of 2 slots, the second slot padding
    blocked = attention_mask(valid, groups=2, slots=2, num_matching=3)[0]
    sees = ~blocked
    assert sees[0].tolist() == [True, False, False, False, True, True, True]  # own group, matching queries
    assert sees[2].tolist() == [False, False, True, False, True, True, True]
    assert sees[5].tolist() == [False, False, False, False, True, True, True]  # matching: no denoising query
    # A padding slot (1, 3) is seen by no other query; its own row is never empty (no NaN).
    assert [i for i in range(7) if sees[i, 1]] == [1] and [i for i in range(7) if sees[i, 3]] == [3]
    assert sees.any(1).all()


def rpn_pair(**changes):
    cfg = tiny_config(denoising_queries=12, **changes)
    torch.manual_seed(0)
    return RegionProposalNetwork.from_config(cfg, CHANNELS), cfg


def test_matching_outputs_do_not_depend_on_the_denoising_queries():
    rpn, _ = rpn_pair()
    rpn.train()
    inputs, targets = features(2), make_targets([2, 3])
    plain = rpn(inputs)
    with_dn = rpn(inputs, targets)
    assert "denoising" not in plain
    for key in ("boxes", "objectness", "masks", "query_features"):
        assert torch.allclose(plain[key], with_dn[key], atol=1e-5), key
    layers = with_dn["denoising"]["layers"]
    assert len(layers) == rpn_pair()[1].decoder_layers
    assert layers[-1]["boxes"].shape == (2, 12, 4)  # 4 groups of 3 slots
    rpn.eval()
    assert "denoising" not in rpn(inputs, targets)  # training only


def test_denoising_terms_are_weighted_and_train_the_reconstruction():
    rpn, cfg = rpn_pair()
    rpn.train()
    criterion = ProposalCriterion.from_config(cfg)
    inputs, targets = features(2), make_targets([2, 3])
    losses, _ = criterion(rpn(inputs, targets), targets)
    names = {name for name in losses if "_dn" in name}
    assert names == {term + suffix for term in ("loss_objectness", "loss_box_l1", "loss_giou", "loss_mask",
                                                  "loss_dice") for suffix in ("_dn", "_dn_aux0")}
    assert set(losses) <= set(criterion.weights())
    optimizer = torch.optim.AdamW(rpn.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        optimizer.zero_grad()
        torch.manual_seed(1)  # the same noised boxes every step: the decoder must learn to undo that noise
        losses, _ = criterion(rpn(inputs, targets), targets)
        first = first or {k: float(v.detach()) for k, v in losses.items()}
        total_loss(criterion, losses).backward()
        optimizer.step()
    assert float(losses["loss_box_l1_dn"].detach()) < 0.5 * first["loss_box_l1_dn"]
    assert rpn.denoising_content.grad is not None and rpn.denoising_content.grad.abs().sum() > 0


def test_off_by_default_with_no_parameter():
    rpn = RegionProposalNetwork.from_config(tiny_config(), CHANNELS)
    assert rpn.denoising_content is None
    assert not any("_dn" in name for name in ProposalCriterion.from_config(tiny_config()).weights())
    assert dataclasses.asdict(tiny_config())["denoising_queries"] == 0
