"""Conditional MoE FFN: routing by attributes, weight merging, plain-FFN mode, deployment count."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unip2.model.moe import (ATTRIBUTES, ConditionalMoEFFN, TokenLayout, attribute_vector,
                             deployment_parameter_count, group_by_attributes)

WIDTH, FFN, EXPERTS, TOP_K = 16, 32, 4, 2


def make_moe(experts=EXPERTS, top_k=TOP_K):
    torch.manual_seed(0)
    moe = ConditionalMoEFFN(width=WIDTH, ffn_dim=FFN, num_experts=experts, top_k=top_k).eval()
    with torch.no_grad():  # non-zero biases so the bias merge is tested too
        moe.b1.normal_()
        moe.b2.normal_()
    return moe


def explicit_merge(moe, attributes_row, x):
    """Σ g_i · expert_i weights computed by hand from the gate's top-k, applied to x: N×D."""
    probs = torch.softmax(moe.gate(attributes_row), dim=-1)
    top, index = probs.topk(moe.top_k)
    top = top / top.sum()
    w1 = sum(g * moe.w1[i] for g, i in zip(top, index))
    b1 = sum(g * moe.b1[i] for g, i in zip(top, index))
    w2 = sum(g * moe.w2[i] for g, i in zip(top, index))
    b2 = sum(g * moe.b2[i] for g, i in zip(top, index))
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def test_attribute_vector():
    vector = attribute_vector(input_image=True, token_text=True, causal=False)
    assert vector.shape == (len(ATTRIBUTES),) and vector.dtype == torch.float32
    assert vector.sum() == 2
    assert vector[ATTRIBUTES.index("input_image")] == 1 and vector[ATTRIBUTES.index("token_text")] == 1
    with pytest.raises(ValueError, match="token_audio"):
        attribute_vector(token_audio=True)


def test_identical_attributes_route_identically():
    moe = make_moe()
    a = attribute_vector(input_image=True, target_category=True, token_image=True, token_regional=True)
    attrs = a.expand(3, 5, -1)
    gates = moe.gate_probabilities(attrs)
    assert torch.equal(gates > 0, (gates[:1, :1] > 0).expand_as(gates))  # same experts everywhere
    assert torch.allclose(gates, gates[:1, :1].expand_as(gates), atol=1e-6)
    assert ((gates > 0).sum(-1) == TOP_K).all() and torch.allclose(gates.sum(-1), torch.ones(3, 5))
    x = torch.randn(1, 1, WIDTH).expand(3, 5, -1).contiguous()
    out = moe(x, attrs)
    assert torch.allclose(out, out[:1, :1].expand_as(out), atol=1e-6)


def test_different_attributes_can_route_differently():
    moe = make_moe()
    rows = torch.stack([attribute_vector(**{name: True}) for name in ATTRIBUTES])  # one-hot rows
    top = moe.gate_probabilities(rows).topk(TOP_K, dim=-1).indices.sort(-1).values
    assert len({tuple(t.tolist()) for t in top}) > 1


def test_merged_ffn_equals_explicit_weighted_experts():
    moe = make_moe()
    rows = [attribute_vector(input_image=True, token_image=True, token_global=True),
            attribute_vector(input_text=True, target_text=True, token_text=True, causal=True),
            attribute_vector(input_image=True, target_category=True, token_text=True, token_is_target=True)]
    # Interleave three attribute rows across batch and time.
    choice = torch.tensor([[0, 1, 2, 1, 0, 2], [2, 2, 0, 1, 1, 0]])
    attrs = torch.stack(rows)[choice]  # 2×6×A
    x = torch.randn(2, 6, WIDTH)
    out = moe(x, attrs)
    for b in range(2):
        for t in range(6):
            expected = explicit_merge(moe, attrs[b, t], x[b, t:t + 1])
            assert torch.allclose(out[b, t], expected[0], atol=1e-5)


def test_gradients_reach_only_the_chosen_experts_and_the_gate():
    moe = make_moe()
    attrs = attribute_vector(input_image=True, token_image=True).expand(2, 3, -1)
    moe(torch.randn(2, 3, WIDTH), attrs).square().sum().backward()
    chosen = moe.gate_probabilities(attrs[0, 0]) > 0
    used = moe.w1.grad.flatten(1).abs().sum(-1) > 0
    assert torch.equal(used, chosen)
    assert moe.gate.weight.grad.abs().sum() > 0


def test_single_expert_is_a_plain_ffn():
    moe = make_moe(experts=1, top_k=1)
    assert moe.gate is None
    x, attrs = torch.randn(2, 4, WIDTH), torch.rand(2, 4, len(ATTRIBUTES)).round()
    expected = F.linear(F.gelu(F.linear(x, moe.w1[0], moe.b1[0])), moe.w2[0], moe.b2[0])
    assert torch.allclose(moe(x, attrs), expected, atol=1e-6)
    assert deployment_parameter_count(moe) == sum(p.numel() for p in moe.parameters())


def test_deployment_count_keeps_one_expert_per_moe():
    moe = make_moe()
    model = nn.Sequential(nn.Linear(WIDTH, WIDTH), moe)
    one_expert = WIDTH * FFN * 2 + FFN + WIDTH
    assert sum(p.numel() for p in model.parameters()) == (WIDTH * WIDTH + WIDTH) + EXPERTS * one_expert + \
        len(ATTRIBUTES) * EXPERTS + EXPERTS
    assert deployment_parameter_count(model) == (WIDTH * WIDTH + WIDTH) + one_expert


def test_precomputed_groups_give_the_same_output():
    moe = make_moe()
    attrs = torch.stack([attribute_vector(token_image=True), attribute_vector(token_text=True)])[
        torch.tensor([[0, 1, 1], [1, 0, 0]])]
    x = torch.randn(2, 3, WIDTH)
    groups = group_by_attributes(attrs)
    assert len(groups.counts) == 2 and sorted(groups.counts) == [3, 3]
    assert torch.allclose(moe(x, attrs, groups), moe(x, attrs), atol=1e-6)


def test_a_layout_groups_as_the_rows_do():
    """The static path (segments of a TokenLayout, no torch.unique) gives the per-token rows' output."""
    moe = make_moe()
    layout = (TokenLayout.of(2, token_image=True, token_regional=True, input_image=True)
              + TokenLayout.of(3, token_text=True, causal=True, input_image=True)
              + TokenLayout.of(1, token_image=True, token_regional=True, input_image=True))
    assert len(layout) == 6 and len(layout.rows()) == 2 and [s[1:] for s in layout.spans()] == [(0, 2), (2, 5), (5, 6)]
    x = torch.randn(2, 6, WIDTH)
    assert torch.allclose(moe(x, layout), moe(x, layout.tensor(2)), atol=1e-6)
    with pytest.raises(ValueError, match="describes 6 tokens"):
        moe(torch.randn(2, 5, WIDTH), layout)
    with pytest.raises(ValueError, match="unknown attribute"):
        TokenLayout.of(1, token_video=True)
