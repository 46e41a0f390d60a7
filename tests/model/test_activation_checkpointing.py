"""``train.activation_checkpointing``: every task's loss and gradients equal the plain model's (dropout and drop
path on, so the recomputation must replay them), less is kept for backward, and inference is unchanged."""

import copy

import numpy as np
import pytest
import torch

import unip2
from unip2.data.row_reader import RowReader
from unip2.model.checkpointing import enable_activation_checkpointing
from unip2.tasks import TASKS, total_loss

from saved_tensors import kept_for_backward


@pytest.fixture(scope="module")
def config(tiny_config):
    """The tiny preset with every kind of randomness a checkpointed block holds."""
    config = copy.deepcopy(tiny_config)
    config.backbone.drop_path_rate = 0.2
    config.text.dropout = 0.2
    config.decoder.dropout = 0.2
    return config


def twins(config):
    """(plain model, the same weights with activation checkpointing), both in training mode."""
    torch.manual_seed(0)
    plain = unip2.build_model(config).train()
    checkpointed = unip2.build_model(config, plain.tokenizer)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, enable_activation_checkpointing(checkpointed).train()


def task_batch(name, model, root, rows=2):
    task = TASKS[name]
    np_batch = task.preprocess(RowReader(root, task.dataset, "train").read(np.arange(rows)),
                               image_size=model.config.image_size, tokenizer=model.tokenizer, train=True,
                               rng=np.random.default_rng(0))
    return task.collate(np_batch)


def step(model, name, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One task's loss → (loss, gradients, bytes autograd kept for backward besides the parameters)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    with kept_for_backward(model) as saved:
        loss = total_loss(TASKS[name].loss(model, batch), TASKS[name].loss_weights(model))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, sum(saved.values())


def test_every_stack_is_switched_to_checkpointing(config):
    _, model = twins(config)
    assert model.backbone.body.grad_checkpointing  # resnet10t: timm's wrapper checkpoints each stage
    assert model.decoder.checkpoint_layers
    layers = model.text_encoder.model.encoder.layer
    assert len(layers) == config.text.num_layers and all(layer.gradient_checkpointing for layer in layers)


@pytest.mark.parametrize("name", list(TASKS))
def test_gradients_equal_the_plain_models(name, config, embedded_data):
    plain, checkpointed = twins(config)
    batch = task_batch(name, plain, embedded_data)
    loss, grads, kept = step(plain, name, batch)
    loss_ckpt, grads_ckpt, kept_ckpt = step(checkpointed, name, batch)
    assert torch.allclose(loss, loss_ckpt, rtol=1e-5), (loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for key in grads:
        assert torch.allclose(grads[key], grads_ckpt[key], rtol=1e-3, atol=1e-6), key
    assert kept_ckpt < 0.8 * kept, (kept_ckpt, kept)


def test_inference_is_unchanged(config, embedded_data):
    plain, checkpointed = twins(config)
    batch = task_batch("captioning", plain, embedded_data)
    outputs = []
    for model in (plain, checkpointed):
        model.eval()
        with torch.inference_mode():
            outputs.append(TASKS["captioning"].predict(model, batch))
    assert outputs[0] == outputs[1]
