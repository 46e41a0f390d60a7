"""UnifiedDecoder: shapes, padding and causal-mask invariance, <SPE> behaviour, prefix_causal_mask."""

import pytest
import torch

from unip2.model.decoder import UnifiedDecoder, prefix_causal_mask
from unip2.model.moe import ATTRIBUTES, ConditionalMoEFFN, attribute_vector
from unip2.presets import preset

ATOL = 1e-5


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return UnifiedDecoder.from_config(preset("tiny").decoder).eval()


def image_text_attributes(batch, num_image, num_text):
    """B×T×A: image tokens, then a causal text stream (a captioning sequence)."""
    image = attribute_vector(input_image=True, target_text=True, token_image=True, token_regional=True)
    text = attribute_vector(input_image=True, target_text=True, token_text=True, causal=True)
    return torch.cat([image.expand(batch, num_image, -1), text.expand(batch, num_text, -1)], dim=1)


def test_shapes_and_from_config(decoder):
    cfg = preset("tiny").decoder
    assert len(decoder.layers) == cfg.num_layers
    assert all(layer.ffn.num_experts == cfg.num_experts for layer in decoder.layers)
    tokens = torch.randn(3, 7, cfg.width)
    out = decoder(tokens, image_text_attributes(3, 4, 3))
    assert out["spe"].shape == (3, cfg.width) and out["tokens"].shape == (3, 7, cfg.width)
    assert torch.isfinite(out["tokens"]).all()


def test_dense_ablation_has_no_gates():
    cfg = preset("tiny").decoder
    cfg.use_moe = False
    dense = UnifiedDecoder.from_config(cfg)
    ffns = [m for m in dense.modules() if isinstance(m, ConditionalMoEFFN)]
    assert ffns and all(f.gate is None and f.num_experts == 1 for f in ffns)


def test_appended_padding_changes_nothing(decoder):
    width = decoder.width
    tokens, attrs = torch.randn(2, 5, width), image_text_attributes(2, 3, 2)
    reference = decoder(tokens, attrs)
    padded_tokens = torch.cat([tokens, 100 * torch.randn(2, 4, width)], dim=1)
    # Padding with other attributes too: it must not change routing of the real tokens.
    padded_attrs = torch.cat([attrs, torch.ones(2, 4, len(ATTRIBUTES))], dim=1)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[:, 5:] = True
    out = decoder(padded_tokens, padded_attrs, padding_mask=padding, spe_attributes=None)
    assert torch.allclose(out["tokens"][:, :5], reference["tokens"], atol=ATOL)
    assert torch.allclose(out["spe"], reference["spe"], atol=ATOL)
    # Different amounts of padding per row.
    padding[0, 5:] = False
    padding[0, 7:] = True
    out = decoder(padded_tokens, padded_attrs, padding_mask=padding)
    assert torch.allclose(out["tokens"][1, :5], reference["tokens"][1], atol=ATOL)


def test_prefix_causal_mask_pattern():
    mask = prefix_causal_mask(2, 3)
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected.unsqueeze(0))
    padding = torch.tensor([[False] * 4 + [True], [False] * 5])
    padded = prefix_causal_mask(2, 3, padding)
    assert padded.shape == (2, 5, 5)
    assert not padded[0, :, 4].any() and torch.equal(padded[1], expected)


def test_causal_stream_cannot_see_later_tokens(decoder):
    width, num_image, num_text = decoder.width, 3, 5
    torch.manual_seed(1)
    tokens = torch.randn(2, num_image + num_text, width)
    attrs = image_text_attributes(2, num_image, num_text)
    padding = torch.zeros(2, num_image + num_text, dtype=torch.bool)
    padding[1, -1] = True
    mask = prefix_causal_mask(num_image, num_text, padding)
    out = decoder(tokens, attrs, padding_mask=padding, attention_mask=mask)
    changed = tokens.clone()
    changed[:, num_image + 2] = torch.randn(width)  # text token 2 (a new direction: LN ignores shifts)
    out_changed = decoder(changed, attrs, padding_mask=padding, attention_mask=mask)
    diff = (out["tokens"] - out_changed["tokens"]).abs().amax(-1)  # B×T
    assert (diff[:, :num_image + 2] < ATOL).all()  # image tokens and earlier text untouched
    assert (diff[0, num_image + 2:] > 1e-3).all()  # the token itself and later ones change
    # Without the mask, information flows backwards.
    free = (decoder(tokens, attrs)["tokens"] - decoder(changed, attrs)["tokens"]).abs().amax(-1)
    assert (free[:, :num_image + 2] > 1e-4).all()


def test_spe_sees_every_real_token(decoder):
    width = decoder.width
    tokens, attrs = torch.randn(2, 6, width), image_text_attributes(2, 3, 3)
    mask = prefix_causal_mask(3, 3)
    out = decoder(tokens, attrs, attention_mask=mask)
    for position in (0, 5):
        changed = tokens.clone()
        changed[:, position] = torch.randn(width)
        assert (decoder(changed, attrs, attention_mask=mask)["spe"] - out["spe"]).abs().amax() > 1e-3


def test_spe_attributes_route_the_spe_token(decoder):
    tokens, attrs = torch.randn(2, 4, decoder.width), image_text_attributes(2, 2, 2)
    default = decoder(tokens, attrs)["spe"]
    explicit = decoder(tokens, attrs, spe_attributes=attrs[:, 0])["spe"]
    assert (default - explicit).abs().amax() > 1e-4


def test_gradients_reach_every_parameter(decoder):
    decoder.train()
    try:
        tokens = torch.randn(2, 6, decoder.width, requires_grad=True)
        # One-hot gate inputs on every row so each gate sees a non-zero input.
        attrs = torch.eye(len(ATTRIBUTES))[torch.arange(12).remainder(len(ATTRIBUTES))].view(2, 6, -1)
        out = decoder(tokens, attrs, padding_mask=torch.tensor([[False] * 6, [False] * 5 + [True]]))
        (out["spe"].square().sum() + out["tokens"].square().sum()).backward()
        # Twelve attribute rows choosing two experts each: every stacked expert tensor gets gradient.
        missing = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing
        assert tokens.grad.abs().sum() > 0
    finally:
        decoder.zero_grad(set_to_none=True)
        decoder.eval()
