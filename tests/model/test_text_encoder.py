"""TextEncoder: shapes, causal vs bidirectional attention, padding, gradients, vocab check, local weights."""

import os

import pytest
import torch

from unip2.config import TextConfig
from unip2.model.text_encoder import TextEncoder
from unip2.model.tokenizer import TextTokenizer
from unip2.presets import preset

OUT = 24


def tiny_text(**overrides) -> TextConfig:
    cfg = TextConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                     max_length=16)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TextEncoder.from_config(tiny_text(), OUT, TextTokenizer.from_file(None)).eval()


def batch():
    ids = torch.randint(5, 400, (2, 10))
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    ids[1, 6], ids[1, 7:], mask[1, 7:] = 2, 1, 0  # row 1: 7 tokens then padding
    return ids, mask


def test_builds_offline_with_the_config_shape(encoder):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    config = encoder.model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (512, 32, 2)
    assert config.pad_token_id == 1 and config.max_position_embeddings == 16 + 2
    assert encoder.vocab_size == 512


def test_shapes(encoder):
    ids, mask = batch()
    assert encoder(ids, mask).shape == (2, 10, OUT)
    full, full_mask = torch.ones(3, 16, dtype=torch.long), torch.ones(3, 16, dtype=torch.long)
    assert encoder(full, full_mask, causal=True).shape == (3, 16, OUT)  # max_length fits the positions


@pytest.mark.parametrize("causal", [False, True])
def test_later_tokens_are_hidden_only_when_causal(encoder, causal):
    ids, mask = batch()
    out = encoder(ids, mask, causal=causal)
    changed = ids.clone()
    changed[:, 4] = 77 if ids[0, 4] != 77 else 78
    diff = (encoder(changed, mask, causal=causal) - out).abs().amax(-1)  # B×L
    assert (diff[:, 4] > 1e-4).all()
    if causal:
        assert (diff[:, :4] < 1e-5).all()
    else:
        assert (diff[:, :4] > 1e-5).all()


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_change_real_tokens(encoder, causal):
    ids, mask = batch()
    out = encoder(ids, mask, causal=causal)
    alone = encoder(ids[1:, :7], mask[1:, :7], causal=causal)
    assert torch.allclose(out[1, :7], alone[0], atol=1e-5)
    assert torch.isfinite(out).all()


def test_eager_attention_gives_the_same_causal_result():
    torch.manual_seed(0)
    encoder = TextEncoder.from_config(tiny_text(), OUT).eval()
    ids, mask = batch()
    sdpa = encoder(ids, mask, causal=True)
    encoder.model.set_attn_implementation("eager")
    assert torch.allclose(encoder(ids, mask, causal=True), sdpa, atol=1e-5)


def test_gradients_flow_to_embeddings_and_projection():
    torch.manual_seed(0)
    encoder = TextEncoder.from_config(tiny_text(), OUT)
    ids, mask = batch()
    encoder(ids, mask, causal=True).square().mean().backward()
    for name in ("model.embeddings.word_embeddings.weight", "model.embeddings.position_embeddings.weight",
                 "model.encoder.layer.0.attention.self.query.weight", "proj.weight"):
        grad = dict(encoder.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_vocabulary_smaller_than_the_tokenizer_is_refused():
    with pytest.raises(ValueError, match="text.vocab_size"):
        TextEncoder.from_config(tiny_text(vocab_size=100), OUT, TextTokenizer.from_file(None))


def test_tiny_preset_builds():
    cfg = preset("tiny")
    encoder = TextEncoder.from_config(cfg.text, cfg.decoder.width, TextTokenizer.from_file(cfg.text.tokenizer_path))
    assert encoder.proj.out_features == cfg.decoder.width


def test_loads_a_local_pretrained_directory(encoder, tmp_path):
    encoder.model.save_pretrained(tmp_path / "roberta")
    loaded = TextEncoder.from_config(tiny_text(pretrained_path=str(tmp_path / "roberta")), OUT).eval()
    for (name, a), (_, b) in zip(encoder.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="text.max_length"):
        TextEncoder.from_config(tiny_text(pretrained_path=str(tmp_path / "roberta"), max_length=40), OUT)
