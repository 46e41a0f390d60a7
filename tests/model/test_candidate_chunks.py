"""Candidate sets encoded in chunks (``model.candidate_chunk_tokens``): the same encodings and gradients as one
batch, dropout replayed in the recomputation, only the K×D outputs kept for backward, and the inference cache."""

import copy

import pytest
import torch

import unip2

from saved_tensors import kept_for_backward

FLAGS = dict(token_is_target=True, input_image=True, target_text=True)
NAMES = [f"a shape of kind number {i}" if i % 3 else f"kind {i}" for i in range(40)]  # padded lengths differ


def twin(model, chunk_tokens: int):
    """A copy of ``model`` (same weights, same mode) that encodes candidates in chunks of ``chunk_tokens``."""
    config = copy.deepcopy(model.config)
    config.candidate_chunk_tokens = chunk_tokens
    other = unip2.build_model(config, model.tokenizer)
    other.load_state_dict(model.state_dict())
    return other.train(model.training)


def candidate_loss(model, features: torch.Tensor) -> torch.Tensor:
    """A loss of both kinds of candidates: the vocabulary (K×1 texts) and class names (K×L texts)."""
    vocabulary = model.encode_vocabulary(torch.arange(model.tokenizer.vocab_size), **FLAGS)  # V×D
    names = model.encode_texts(NAMES, **FLAGS)  # 40×D
    return (model.score(features, vocabulary, "vocabulary").logsumexp(-1).sum()
            + model.score(features, names, "category").logsumexp(-1).sum())


def gradients(model, features: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = candidate_loss(model, features)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return unip2.build_model(tiny_config).train()


def test_chunked_gradients_equal_the_unchunked_ones(model):
    features = torch.randn(6, model.config.decoder.width, generator=torch.Generator().manual_seed(1))
    whole = twin(model, chunk_tokens=10**6)
    chunked = twin(model, chunk_tokens=37)  # 37 vocabulary rows, a few names, per chunk: many chunks, a short last
    assert model.tokenizer.vocab_size > 37 * 5
    loss_whole, grads_whole = gradients(whole, features)
    loss_chunked, grads_chunked = gradients(chunked, features)
    assert torch.allclose(loss_whole, loss_chunked, rtol=1e-5)
    assert grads_whole.keys() == grads_chunked.keys()
    assert {n.split(".")[0] for n in grads_whole} >= {"text_encoder", "decoder", "token_type", "scorer"}
    for name in grads_whole:
        assert torch.allclose(grads_whole[name], grads_chunked[name], rtol=1e-4, atol=1e-6), name


def test_dropout_is_replayed_when_a_chunk_is_recomputed(model):
    """With dropout on, the chunked (checkpointed) encoding equals the chunks encoded one by one without
    recomputation, forward and backward: the recomputation draws the first pass's masks again."""
    config = copy.deepcopy(model.config)
    config.text.dropout, config.decoder.dropout, config.candidate_chunk_tokens = 0.2, 0.2, 50
    torch.manual_seed(0)
    chunked = unip2.build_model(config, model.tokenizer).train()
    one_by_one = twin(chunked, chunk_tokens=10**6)
    ids = torch.arange(200)
    weights = torch.randn(200, config.decoder.width, generator=torch.Generator().manual_seed(2))

    torch.manual_seed(5)
    encoded = chunked.encode_vocabulary(ids, **FLAGS)  # 4 chunks of 50, each recomputed in backward
    (encoded * weights).sum().backward()
    torch.manual_seed(5)
    reference = torch.cat([one_by_one.encode_vocabulary(ids[start:start + 50], **FLAGS) for start in range(0, 200, 50)])
    (reference * weights).sum().backward()
    torch.manual_seed(5)
    assert not torch.allclose(reference, one_by_one.encode_vocabulary(ids, **FLAGS))  # dropout is on: masks matter
    assert torch.allclose(encoded, reference, atol=1e-6)
    for (name, a), (_, b) in zip(chunked.named_parameters(), one_by_one.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


def saved_bytes(model, count: int) -> int:
    """Bytes autograd keeps for backward when ``count`` vocabulary tokens are encoded (parameters not counted)."""
    with kept_for_backward(model) as saved:
        encoded = model.encode_vocabulary(torch.arange(count), **FLAGS)
        encoded.square().sum()  # keeps the K×D outputs, as scoring them does
    return sum(saved.values())


def test_backward_keeps_only_the_outputs_of_chunked_candidates(model):
    width = model.config.decoder.width
    chunked = twin(model, chunk_tokens=32)
    whole = twin(model, chunk_tokens=10**6)
    grown = saved_bytes(chunked, 512) - saved_bytes(chunked, 256)
    assert grown <= 2 * 256 * width * 4  # the outputs (and the cat's copy), not the layers' activations
    assert saved_bytes(whole, 512) > 10 * saved_bytes(chunked, 512)


def test_inference_chunks_without_autograd_and_keeps_the_cache(model):
    chunked, whole = twin(model, chunk_tokens=37).eval(), twin(model, chunk_tokens=10**6).eval()
    with torch.no_grad():
        ids = torch.arange(model.tokenizer.vocab_size)
        first = chunked.encode_vocabulary(ids, **FLAGS)
        assert chunked.encode_vocabulary(ids, **FLAGS) is first  # cached
        assert torch.allclose(first, whole.encode_vocabulary(ids, **FLAGS), atol=1e-5)
        assert torch.allclose(chunked.encode_texts(NAMES, **FLAGS), whole.encode_texts(NAMES, **FLAGS), atol=1e-5)
        assert not first.requires_grad
