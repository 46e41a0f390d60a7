"""``train.compile``: every heavy module compiled in place gives the same loss and gradients, and the state dict
keeps its names (checkpoints of compiled runs load into plain models)."""

import numpy as np
import torch

import unip2
from unip2.tasks import TASKS
from unip2.tasks.base import to_device_function
from unip2.training_setup import COMPILED_MODULES, TaskLoss, compile_model, running_eagerly


def test_compiled_model_matches_the_plain_one(tiny_config):
    torch.manual_seed(0)
    plain = unip2.build_model(tiny_config)
    compiled = unip2.build_model(tiny_config)
    compiled.load_state_dict(plain.state_dict())
    compile_model(compiled)
    assert list(compiled.state_dict()) == list(plain.state_dict())

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(2, 3, 64, 64), dtype=np.uint8)
    batch = TASKS["classification"].collate({"images": images, "labels": np.array([0, 3])})
    losses, grads = [], []
    for model in (plain, compiled):
        loss, _ = TaskLoss(model)("classification", batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.backbone.body.conv1[0].weight.grad.clone())
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    assert all(getattr(compiled, name)._compiled_call_impl is not None for name in COMPILED_MODULES)

    # Validation runs the same modules eagerly (no new graphs for a few images), then training's graphs are back.
    compiled_calls = {name: getattr(compiled, name)._compiled_call_impl for name in COMPILED_MODULES}
    torch._dynamo.utils.counters.clear()
    with running_eagerly(compiled), torch.no_grad():
        eager_loss, _ = TaskLoss(compiled)("classification", batch)
    assert not torch._dynamo.utils.counters["stats"]["calls_captured"]  # nothing traced
    assert torch.allclose(eager_loss, losses[0], rtol=1e-4, atol=1e-5)
    assert {name: getattr(compiled, name)._compiled_call_impl for name in COMPILED_MODULES} == compiled_calls


def test_to_device_on_cpu_is_a_view_of_the_array():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_device_function(torch.device("cpu"))(array)
    assert tensor.data_ptr() == array.ctypes.data  # no copy on the CPU path (pinning is for CUDA only)
