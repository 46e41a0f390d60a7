"""The whole model: it learns every task, saves and loads exactly, and the presets have the paper's sizes."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

import unip2
from unip2.data.row_reader import RowReader
from unip2.optim import MTAdamW, param_groups_for
from unip2.tasks import TASKS, total_loss


def fixed_batches(model, root, rows=4):
    batches = {}
    for name, task in TASKS.items():
        reader = RowReader(root, task.dataset, "train")
        np_batch = task.preprocess(reader.read(np.arange(rows)), image_size=model.config.image_size,
                                   tokenizer=model.tokenizer, train=False, rng=np.random.default_rng(0))
        batches[name] = task.collate(np_batch)
    return batches


def test_tiny_model_overfits_a_few_samples_of_every_task(tiny_config, embedded_data):
    torch.manual_seed(0)
    model = unip2.build_model(tiny_config)
    batches = fixed_batches(model, embedded_data)
    optimizer = MTAdamW(param_groups_for(model, 0.0), lr=1e-3)

    def losses():
        with torch.no_grad():
            return {name: float(total_loss(TASKS[name].loss(model, b), TASKS[name].loss_weights(model)))
                    for name, b in batches.items()}

    before = losses()
    for step in range(20):
        for name, batch in batches.items():  # unmixed: one task per optimizer step
            task = TASKS[name]
            optimizer.zero_grad(set_to_none=True)
            total_loss(task.loss(model, batch), task.loss_weights(model)).backward()
            optimizer.step(omega=1.0, s=1.0)
    after = losses()
    for name in batches:
        assert after[name] < 0.8 * before[name], f"{name}: {before[name]:.3f} -> {after[name]:.3f}"


def test_the_saved_config_carries_input_settings_and_pixel_normalization(tiny_config, tmp_path):
    config = copy.deepcopy(tiny_config)
    config.pixel_mean, config.pixel_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config.tasks["retrieval"].image_size, config.tasks["retrieval"].max_text_length = 64, 16
    model = unip2.load(unip2.save(unip2.build_model(config), tmp_path / "model"))
    assert model.config == config
    assert model.pixel_mean.flatten().tolist() == [0.5] * 3 and model.pixel_std.flatten().tolist() == [0.25] * 3
    settings = model.config.task_input_settings("retrieval")
    assert (settings.image_size, settings.max_text_length, settings.pixel_std) == (64, 16, (0.25, 0.25, 0.25))
    # Retrieval sentences are tokenized to the length the task trained with, not text.max_length (32).
    retrieval, text = TASKS["retrieval"], " ".join(["a red circle"] * 20)
    model.eval()
    with torch.no_grad():
        embedded = retrieval.embed_texts(model, [text])
        features = {length: retrieval.text_features(model, *map(torch.as_tensor,
                                                                model.tokenizer.encode_batch([text], length)))
                    for length in (16, config.text.max_length)}
    assert torch.allclose(embedded, features[16]) and not torch.allclose(embedded, features[config.text.max_length])


def test_save_then_load_gives_identical_outputs(tiny_checkpoint, embedded_data):
    model = unip2.load(tiny_checkpoint).eval()
    again = unip2.load(tiny_checkpoint).eval()
    batches = fixed_batches(model, embedded_data, rows=2)
    for name in ("classification", "instance_segmentation", "captioning"):
        first = TASKS[name].predict(model, batches[name])
        second = TASKS[name].predict(again, batches[name])
        assert first == second, name
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_incomplete_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        unip2.load(tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        unip2.load(partial)


def test_vocabulary_larger_than_the_embedding_is_refused(tiny_config):
    import dataclasses

    small = dataclasses.replace(tiny_config, text=dataclasses.replace(tiny_config.text, vocab_size=100))
    with pytest.raises(ValueError, match="text.vocab_size"):
        unip2.build_model(small)


# Deployment parameters: one merged expert per MoE FFN, as the paper counts its 308M / 446M.
PAPER_PARAMS = {"base": 308e6, "large": 446e6}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_base_and_large_land_within_ten_percent_of_the_paper(name):
    code = ("import unip2; from unip2.model.moe import deployment_parameter_count as d; "
            f"print(d(unip2.build_model(unip2.preset('{name}'))))")
    count = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               timeout=600).stdout.split()[-1])
    assert abs(count - PAPER_PARAMS[name]) / PAPER_PARAMS[name] <= 0.10, count


def test_candidates_are_cached_at_inference_and_refreshed_after_training(tiny_checkpoint):
    model = unip2.load(tiny_checkpoint).eval()
    names = ["red circle", "blue square"]
    with torch.no_grad():
        first = model.encode_texts(names, target_category=True)
        assert model.encode_texts(names, target_category=True) is first  # served from the cache
        ids = torch.arange(model.tokenizer.vocab_size)
        vocabulary = model.encode_vocabulary(ids, target_text=True)
        assert model.encode_vocabulary(ids, target_text=True) is vocabulary
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.01)
    model.train().eval()  # a mode switch drops the cache: new weights give new candidates
    with torch.no_grad():
        assert not torch.allclose(model.encode_texts(names, target_category=True), first)
    assert model.encode_texts(names, target_category=True).requires_grad  # never cached with autograd on
