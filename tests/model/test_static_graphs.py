"""Every heavy module of the model traces as one graph for every task: ``torch.compile(fullgraph=True)``
refuses a graph break, so a host round-trip (``.item()``, ``.tolist()``, ``torch.unique``) or a
data-dependent Python branch inside a module's forward fails here. Dynamo's ``eager`` backend traces without
generating code, so the check is cheap on CPU; the training step compiles the same modules
(``train.compile``)."""

import copy

import numpy as np
import pytest
import torch

import unip2
from unip2.data.row_reader import RowReader
from unip2.tasks import TASKS
from unip2.training_setup import TaskLoss

# The model's heavy children, each compiled whole (the proposal network holds the pixel encoder).
HEAVY = ("backbone", "proposals", "global_tokens", "regional_tokens", "text_encoder", "decoder")


def task_batch(task, model, root, rows=2):
    reader = RowReader(root, task.dataset, "train")
    np_batch = task.preprocess(reader.read(np.arange(rows)), image_size=model.config.image_size,
                               tokenizer=model.tokenizer, train=True, rng=np.random.default_rng(0))
    return task.collate(np_batch)


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return unip2.build_model(tiny_config)


def compiled_calls(model) -> dict[str, list[int]]:
    """Wrap each heavy module's forward in a fullgraph compile that counts its calls."""
    calls = {name: [0] for name in HEAVY}
    for name in HEAVY:
        module = getattr(model, name)
        traced = torch.compile(module.forward, backend="eager", fullgraph=True, dynamic=False)

        def counted(*args, _traced=traced, _count=calls[name], **kwargs):
            _count[0] += 1
            return _traced(*args, **kwargs)

        module.forward = counted
    return calls


@pytest.mark.parametrize("name", list(TASKS))
def test_each_heavy_module_is_one_graph(name, model, embedded_data):
    torch._dynamo.reset()
    calls = compiled_calls(model)
    try:
        batch = task_batch(TASKS[name], model, embedded_data)
        loss, _ = TaskLoss(model)(name, batch)  # a graph break raises torch._dynamo.exc.Unsupported
        loss.backward()
    finally:
        for module in HEAVY:
            del getattr(model, module).forward  # back to the class's forward
    assert calls["decoder"][0] > 0 and calls["text_encoder"][0] > 0
    if name != "language_modelling":
        assert calls["backbone"][0] > 0 and calls["proposals"][0] > 0


def test_the_proposal_options_keep_one_graph(tiny_config, embedded_data):
    """Denoising queries and mask-enhanced anchors (off in the presets) trace whole too."""
    config = copy.deepcopy(tiny_config)
    config.proposals.denoising_queries, config.proposals.mask_enhanced_anchors = 12, True
    torch.manual_seed(0)
    model = unip2.build_model(config)
    torch._dynamo.reset()
    calls = compiled_calls(model)
    for name in ("detection", "instance_segmentation"):
        loss, _ = TaskLoss(model)(name, task_batch(TASKS[name], model, embedded_data))
        loss.backward()
    assert calls["proposals"][0] == 2
