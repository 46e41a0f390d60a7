"""Every registered task: forward + backward on the tiny model, gradients where they belong, predictions."""

import numpy as np
import pytest
import torch

import unip2
from unip2.data.row_reader import RowReader
from unip2.tasks import TASKS, get_task, total_loss


def task_batch(task, model, root, rows=4, seed=0):
    reader = RowReader(root, task.dataset, "train")
    np_batch = task.preprocess(reader.read(np.arange(rows)), image_size=model.config.image_size,
                               tokenizer=model.tokenizer, train=True, rng=np.random.default_rng(seed))
    return task.collate(np_batch)


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return unip2.build_model(tiny_config)


def grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# Which part of the model each task's gradient must reach.
REACHES = {
    "classification": ["backbone", "proposals", "global_tokens", "text_encoder", "decoder"],
    "detection": ["backbone", "proposals", "regional_tokens", "text_encoder", "decoder"],
    "instance_segmentation": ["backbone", "proposals", "regional_tokens", "text_encoder", "decoder"],
    "captioning": ["backbone", "proposals", "global_tokens", "text_encoder", "decoder"],
    "retrieval": ["backbone", "proposals", "global_tokens", "text_encoder", "decoder"],
    "language_modelling": ["text_encoder", "decoder"],
}
FAMILY = {"classification": "category", "detection": "category", "instance_segmentation": "category",
          "captioning": "vocabulary", "retrieval": "retrieval", "language_modelling": "vocabulary"}


@pytest.mark.parametrize("name", list(TASKS))
def test_forward_backward_reaches_the_right_parameters(name, model, embedded_data):
    task = TASKS[name]
    batch = task_batch(task, model, embedded_data)
    model.zero_grad(set_to_none=True)
    terms = task.loss(model, batch)
    assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    total_loss(terms, task.loss_weights(model)).backward()
    for part in REACHES[name]:
        assert grad_norm(getattr(model, part)) > 0, f"{name}: no gradient reaches {part}"
    family = model.scorer.families.index(FAMILY[name])
    assert model.scorer.logit_scale.grad[family].abs() > 0  # the task's own temperature learns


@pytest.mark.parametrize("name", list(TASKS))
def test_predictions_have_the_standard_format(name, model, embedded_data):
    task = TASKS[name]
    batch = task_batch(task, model, embedded_data, rows=2)
    model.eval()
    try:
        predictions = task.predict(model, batch)
    finally:
        model.train()
    assert [p["image_id"] for p in predictions] == batch["image_id"].tolist()
    first = predictions[0]
    if name == "classification":
        assert 0 <= first["label"] < len(model.config.class_names["imagenet"]) and 0 < first["score"] <= 1
    elif name in ("detection", "instance_segmentation"):
        assert len(first["boxes"]) == len(first["scores"]) == len(first["labels"]) > 0
        assert all(len(box) == 4 and box[2] >= 0 and box[3] >= 0 for box in first["boxes"])
        if name == "instance_segmentation":
            assert len(first["masks"]) == len(first["boxes"]) and "counts" in first["masks"][0]
    elif name == "captioning":
        assert isinstance(first["caption"], str) and first["beams"]
    elif name == "language_modelling":
        assert 0 <= first["correct"] <= first["masked"] and first["masked"] > 0 and first["nll"] > 0
    else:
        assert first["image_embedding"].shape == (model.config.decoder.width,)
        assert first["text_embeddings"].shape[0] == len(first["captions"]) >= 5


def test_an_image_without_objects_trains(model, embedded_data):
    task = TASKS["instance_segmentation"]
    reader = RowReader(embedded_data, task.dataset, "train")
    rows = reader.read(np.arange(2))
    for column in ("boxes", "labels", "category_ids", "masks", "iscrowd", "areas"):
        rows[column][0] = []
    np_batch = task.preprocess(rows, image_size=model.config.image_size, tokenizer=model.tokenizer, train=True,
                               rng=np.random.default_rng(0))
    batch = task.collate(np_batch)
    assert batch["boxes"][0].shape == (0, 4)
    terms = task.loss(model, batch)
    assert all(torch.isfinite(v) for v in terms.values())
    rows["boxes"][1] = rows["labels"][1] = rows["masks"][1] = rows["iscrowd"][1] = []
    batch = task.collate(task.preprocess(rows, image_size=model.config.image_size, tokenizer=model.tokenizer,
                                         train=True, rng=np.random.default_rng(0)))
    terms = task.loss(model, batch)  # a whole batch without objects
    assert all(torch.isfinite(v) for v in terms.values())
    total_loss(terms, task.loss_weights(model)).backward()


def test_unknown_task_and_empty_class_names_are_refused(model):
    with pytest.raises(KeyError, match="registered tasks"):
        get_task("depth")
    with pytest.raises(ValueError, match="class_names"):
        TASKS["classification"].class_names(model, [])


def test_wrong_image_size_is_refused(model):
    with pytest.raises(ValueError, match="multiples of 32"):
        model.encode_image(torch.zeros(1, 3, 100, 100))
    with pytest.raises(ValueError, match="B×3×H×W"):
        model.encode_image(torch.zeros(3, 64, 64))
