"""Stage 1's encoders: they learn, and what they write loads through the paths users' downloaded weights take."""

import json

import numpy as np
import pytest
import torch

import unip2
from unip2.model.backbone import Backbone
from unip2.model.text_encoder import TextEncoder
from unip2.model.tokenizer import TextTokenizer, tokenizer_for
from unip2.presets import preset
from unip2.pretraining import EncoderPretraining
from unip2.tasks import TASKS
from unip2.tasks.language_modelling import mask_tokens

CLASSES = [f"class {i}" for i in range(4)]
TEXTS = ["a small red circle at the top of the image", "two large blue stars on a dark background",
         "a green square in the middle", "three small triangles at the bottom left"]


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.from_file(None)


def image_batch(seed: int = 0) -> dict:
    """Four images whose class is the colour of their centre: learnable from one batch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (4, 3, 64, 64), dtype=torch.uint8, generator=generator)
    for label in range(4):
        images[label, label % 3, 16:48, 16:48] = 250 if label < 3 else 0
    return {"images": images, "labels": torch.arange(4)}


def text_batch(tokenizer) -> dict:
    ids, attention = tokenizer.encode_batch(TEXTS, 16)
    inputs, targets = mask_tokens(ids, attention, tokenizer, np.random.default_rng(0), 0.15)
    return {"input_ids": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(attention),
            "targets": torch.from_numpy(targets)}


def test_both_encoders_fit_a_batch(tokenizer):
    torch.manual_seed(0)
    model = EncoderPretraining(preset("tiny"), tokenizer, num_classes=4, label_smoothing=0.0)
    batches = {"classification": image_batch(), "language_modelling": text_batch(tokenizer)}
    for task, batch in batches.items():
        optimizer = torch.optim.AdamW(model.encoder(TASKS[task].pretrains).parameters(), lr=3e-3)
        first, _, count = model(task, batch)
        for _ in range(30):
            loss, right, _ = model(task, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert loss.item() < 0.5 * first.item(), task
        assert right == count, task


def test_only_the_named_encoders_are_built(tokenizer):
    model = EncoderPretraining(preset("tiny"), tokenizer, num_classes=4, encoders=("text",))
    assert model.image is None and model.text is not None
    with pytest.raises(ValueError, match="image encoder is not pretrained"):
        model("classification", image_batch())


def test_outputs_load_through_the_pretrained_paths_with_every_tensor(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = preset("tiny")
    model = EncoderPretraining(config, tokenizer, num_classes=len(CLASSES), class_names=CLASSES)
    weights = model.save_image_encoder(tmp_path / "image")
    text_dir = model.save_text_encoder(tmp_path / "text", tokenizer)
    saved = json.loads((tmp_path / "image" / "config.json").read_text())
    assert saved["architecture"] == config.backbone.name and saved["label_names"] == CLASSES

    # The image encoder: timm's loader maps the classifier file onto the feature extractor, nothing left out.
    backbone = Backbone(name=config.backbone.name, out_indices=config.backbone.out_indices, image_size=64,
                        pretrained_path=str(weights))
    classifier = model.image.state_dict()
    features = backbone.body.state_dict()
    assert len(features) > 50
    for name, tensor in features.items():
        assert torch.equal(tensor, classifier[name]), name

    # The text encoder: a transformers directory with its tokenizer, loaded as a user's RoBERTa is.
    config.text.pretrained_path = str(text_dir)
    assert tokenizer_for(config.text).to_json() == tokenizer.to_json()
    encoder = TextEncoder.from_config(config.text, out_width=32, tokenizer=tokenizer)
    masked_lm = model.text.base_model.state_dict()
    for name, tensor in encoder.model.state_dict().items():
        assert torch.equal(tensor, masked_lm[name]), name

    # And the whole generalist builds from both.
    config.backbone.pretrained_path = str(weights)
    config.class_names = {"imagenet": CLASSES, "coco": CLASSES}
    generalist = unip2.build_model(config, tokenizer_for(config.text))
    assert torch.equal(generalist.backbone.body.state_dict()["conv1.0.weight"], classifier["conv1.0.weight"])


def test_a_bert_family_tokenizer_round_trips_through_a_transformers_directory(tmp_path):
    from tests.model.conftest import bert_tokenizer

    tokenizer = TextTokenizer(tokenizer=bert_tokenizer())
    tokenizer.save_transformers(tmp_path)
    loaded = TextTokenizer.from_transformers(tmp_path)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    assert loaded.encode_batch(TEXTS, 12)[0].tolist() == tokenizer.encode_batch(TEXTS, 12)[0].tolist()
