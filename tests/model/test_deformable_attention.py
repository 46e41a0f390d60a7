"""Multi-scale deformable attention against a naive per-point bilinear reference."""

import math

import torch

from unip2.model.deformable_attention import MultiScaleDeformableAttention, multi_scale_deformable_attention

SHAPES = [(6, 5), (3, 4)]  # (H_l, W_l), deliberately non-square


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """image C×H×W at normalized (x, y): pixel coords x·W − 0.5, y·H − 0.5, zeros outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = image.new_zeros(image.shape[0])
    for xi, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
        for yi, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
            if 0 <= xi < width and 0 <= yi < height:
                out = out + wx * wy * image[:, yi, xi]
    return out


def naive_attention(value, shapes, locations, weights):
    """Same contract as multi_scale_deformable_attention, one point at a time."""
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = value.new_zeros(batch, queries, heads * head_dim)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                acc = value.new_zeros(head_dim)
                for level, (height, width) in enumerate(shapes):
                    image = value[b, starts[level]:starts[level + 1], h].T.reshape(head_dim, height, width)
                    for p in range(points):
                        x, y = locations[b, q, h, level, p].tolist()
                        acc = acc + weights[b, q, h, level, p] * bilinear(image, x, y)
                out[b, q, h * head_dim:(h + 1) * head_dim] = acc
    return out


def make_inputs(batch=2, queries=3, heads=2, head_dim=4, points=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen, dtype=dtype)
    # Some locations fall outside [0, 1] to exercise the zero padding.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=gen, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=gen, dtype=dtype).softmax(-1)
    return value, torch.tensor(SHAPES), locations, weights


def test_core_matches_naive_bilinear():
    value, shapes, locations, weights = make_inputs()
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    slow = naive_attention(value, SHAPES, locations, weights)
    assert fast.shape == (2, 3, 8)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_core_gradcheck():
    value, shapes, locations, weights = make_inputs(batch=1, queries=2, heads=2, head_dim=2, points=2,
                                                    dtype=torch.float64)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, loc, w: multi_scale_deformable_attention(v, shapes, loc, w),
                                    inputs, eps=1e-6, atol=1e-5)


def module_reference(module, query, reference, value, shapes):
    """The module's math written out: projections, offsets around the reference, naive sampling."""
    batch, queries, _ = query.shape
    heads, levels, points = module.num_heads, module.num_levels, module.num_points
    projected = module.value_proj(value).view(batch, value.shape[1], heads, -1)
    offsets = module.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
    weights = module.attention_weights(query).view(batch, queries, heads, -1).softmax(-1)
    weights = weights.view(batch, queries, heads, levels, points)
    locations = torch.empty_like(offsets)
    for level, (height, width) in enumerate(shapes):
        ref = reference[:, :, level]
        for p in range(points):
            off = offsets[:, :, :, level, p]
            if ref.shape[-1] == 2:
                scale = torch.tensor([1.0 / width, 1.0 / height])
                locations[:, :, :, level, p] = ref[:, :, None, :] + off * scale
            else:
                locations[:, :, :, level, p] = ref[:, :, None, :2] + off / points * ref[:, :, None, 2:] / 2
    return module.output_proj(naive_attention(projected, shapes, locations, weights))


def make_module():
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(dim=8, num_heads=2, num_levels=len(SHAPES), num_points=3)
    with torch.no_grad():  # non-zero offset / weight projections so they depend on the query
        module.sampling_offsets.weight.normal_(0, 0.3)
        module.attention_weights.weight.normal_(0, 0.3)
    return module


def test_module_matches_reference_for_points_and_boxes():
    module = make_module()
    tokens = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 3, 8), torch.randn(2, tokens, 8)
    shapes = torch.tensor(SHAPES)
    starts = torch.tensor([0, SHAPES[0][0] * SHAPES[0][1]])
    points = torch.rand(2, 3, len(SHAPES), 2)
    boxes = torch.cat([torch.rand(2, 3, len(SHAPES), 2), torch.rand(2, 3, len(SHAPES), 2) * 0.5 + 0.1], -1)
    for reference in (points, boxes):
        out = module(query, reference, value, shapes, starts)
        assert out.shape == (2, 3, 8)
        torch.testing.assert_close(out, module_reference(module, query, reference, value, SHAPES),
                                   atol=1e-5, rtol=1e-5)


def test_padding_mask_hides_tokens():
    module = make_module()
    tokens = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(1, 3, 8), torch.randn(1, tokens, 8)
    shapes, starts = torch.tensor(SHAPES), torch.tensor([0, 30])
    reference = torch.rand(1, 3, len(SHAPES), 2)
    padding = torch.zeros(1, tokens, dtype=torch.bool)
    padding[0, -5:] = True
    changed = value.clone()
    changed[0, -5:] += 10.0
    torch.testing.assert_close(module(query, reference, value, shapes, starts, padding),
                               module(query, reference, changed, shapes, starts, padding))


def test_gradients_reach_value_offsets_and_weights():
    module = make_module()
    tokens = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 8, requires_grad=True)
    value = torch.randn(2, tokens, 8, requires_grad=True)
    reference = torch.rand(2, 3, len(SHAPES), 4) * 0.5 + 0.25
    module(query, reference, value, torch.tensor(SHAPES), torch.tensor([0, 30])).square().sum().backward()
    for tensor in (value, query, module.value_proj.weight, module.sampling_offsets.weight,
                   module.sampling_offsets.bias, module.attention_weights.weight, module.output_proj.weight):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
