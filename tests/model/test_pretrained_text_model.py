"""The whole model with a pretrained BERT text encoder (captioning, greedy captions, retrieval), its save →
load round trip without the original directory, old checkpoints, and the restricted caption vocabulary."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel, RobertaModel

import unip2
from unip2.config_io import ConfigError, validate
from unip2.data.caption_vocabulary import caption_token_ids
from unip2.data.row_reader import RowReader
from unip2.persistence import TEXT_ENCODER_CONFIG
from unip2.tasks import TASKS
from unip2.tasks import captioning
from unip2.tasks.beam_search import beam_search
from unip2.tasks.captioning import TASK_FLAGS


def batch_of(model, root, task: str, rows: int = 2) -> dict:
    reader = RowReader(root, TASKS[task].dataset, "train")
    np_batch = TASKS[task].preprocess(reader.read(np.arange(rows)), image_size=model.config.image_size,
                                      tokenizer=model.tokenizer, train=False, rng=np.random.default_rng(0))
    return TASKS[task].collate(np_batch)


@pytest.fixture(scope="module")
def bert_source(pretrained_dirs, tmp_path_factory):
    """A copy of the BERT masked-LM directory (tests delete it to show a checkpoint does not need it)."""
    source = tmp_path_factory.mktemp("bert") / "bert-mlm"
    shutil.copytree(pretrained_dirs["bert", "mlm"][0], source)
    return source


@pytest.fixture(scope="module")
def bert_config(tiny_config, bert_source):
    config = copy.deepcopy(tiny_config)
    config.text.pretrained_path = str(bert_source)
    return config


@pytest.fixture(scope="module")
def bert_model(bert_config):
    torch.manual_seed(0)
    return unip2.build_model(bert_config)


def test_the_bert_encoder_and_its_tokenizer_are_used(bert_model, pretrained_dirs):
    saved = pretrained_dirs["bert", "mlm"][1]
    assert type(bert_model.text_encoder.model) is BertModel
    for name, tensor in bert_model.text_encoder.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    vocab = bert_model.tokenizer._tokenizer.get_vocab()
    assert bert_model.tokenizer.bos_id == vocab["[CLS]"] and bert_model.tokenizer.eos_id == vocab["[SEP]"]
    # the whole vocabulary by default
    assert len(TASKS["captioning"].candidates(bert_model)[0]) == bert_model.tokenizer.vocab_size


def test_captioning_and_retrieval_run_with_the_bert_encoder(bert_model, embedded_data):
    captions = batch_of(bert_model, embedded_data, "captioning")
    assert (captions["input_ids"][:, 0] == bert_model.tokenizer.bos_id).all()  # [CLS] starts every caption
    bert_model.train()
    loss = TASKS["captioning"].loss(bert_model, captions)["loss_caption"]
    assert torch.isfinite(loss)
    loss.backward()
    grad = bert_model.text_encoder.model.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    bert_model.zero_grad(set_to_none=True)
    retrieval = TASKS["retrieval"].loss(bert_model, batch_of(bert_model, embedded_data, "retrieval"))
    assert all(torch.isfinite(v) for v in retrieval.values())
    bert_model.eval()
    predicted = TASKS["captioning"].predict(bert_model, captions, max_length=6)
    assert [p["image_id"] for p in predicted] == [int(i) for i in captions["image_id"]]
    assert all(isinstance(p["caption"], str) and "[CLS]" not in p["caption"] for p in predicted)
    features = TASKS["retrieval"].embed_texts(bert_model, ["a red circle", "a blue square"])
    assert features.shape == (2, bert_model.config.decoder.width) and torch.isfinite(features).all()


def test_save_then_load_without_the_original_directory(bert_model, bert_source, embedded_data, tmp_path):
    bert_model.eval()
    checkpoint = unip2.save(bert_model, tmp_path / "model")
    captions = batch_of(bert_model, embedded_data, "captioning")
    expected_captions = TASKS["captioning"].predict(bert_model, captions, max_length=6)
    with torch.no_grad():
        expected_texts = TASKS["retrieval"].embed_texts(bert_model, ["a red circle", "two green triangles"])
    shutil.rmtree(bert_source)  # the checkpoint alone must rebuild the BERT encoder

    text = json.loads((checkpoint / "config.json").read_text())["text"]
    assert (text["architecture"], text["hidden_size"], text["num_layers"], text["num_heads"],
            text["intermediate_size"], text["vocab_size"]) == ("bert", 32, 2, 4, 64, bert_model.text_encoder.vocab_size)
    assert json.loads((checkpoint / TEXT_ENCODER_CONFIG).read_text())["model_type"] == "bert"
    loaded = unip2.load(checkpoint).eval()
    assert type(loaded.text_encoder.model) is BertModel
    assert loaded.config.text.pretrained_path is None
    for (name, a), (_, b) in zip(bert_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert TASKS["captioning"].predict(loaded, captions, max_length=6) == expected_captions
    with torch.no_grad():
        assert torch.equal(TASKS["retrieval"].embed_texts(loaded, ["a red circle", "two green triangles"]),
                           expected_texts)


def test_an_old_checkpoint_without_the_architecture_loads_as_roberta(tiny_checkpoint, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    (old / TEXT_ENCODER_CONFIG).unlink()
    config = json.loads((old / "config.json").read_text())
    del config["text"]["architecture"]
    (old / "config.json").write_text(json.dumps(config))
    loaded, reference = unip2.load(old), unip2.load(tiny_checkpoint)
    assert type(loaded.text_encoder.model) is RobertaModel
    for (name, a), (_, b) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def restricted(config, ids):
    config = copy.deepcopy(config)
    config.tasks["captioning"].vocabulary = "training_captions"
    config.tasks["captioning"].token_ids = list(ids)
    return config


def test_the_restricted_vocabulary_scores_only_the_training_captions_tokens(tiny_config, embedded_data, tmp_path):
    torch.manual_seed(0)
    full = unip2.build_model(tiny_config).eval()
    captions = batch_of(full, embedded_data, "captioning")
    texts = [str(c) for refs in captions["references"] for c in refs]
    ids = caption_token_ids(full.tokenizer, texts)
    assert full.tokenizer.eos_id in ids and full.tokenizer.bos_id not in ids and len(ids) < full.tokenizer.vocab_size
    model = unip2.build_model(restricted(tiny_config, ids)).eval()
    model.load_state_dict(full.state_dict())
    assert TASKS["captioning"].candidates(model)[0].tolist() == ids
    assert TASKS["captioning"].vocabulary(model).shape == (len(ids), tiny_config.decoder.width)

    # The loss is the full model's cross-entropy restricted to the candidates' columns.
    with torch.no_grad():
        loss = TASKS["captioning"].loss(model, captions)["loss_caption"]
        task = TASKS["captioning"]
        encoding = full.encode_image(captions["images"])
        tokens, attributes = full.image_sequence(encoding, **TASK_FLAGS)
        features = task.next_word_features(full, tokens, attributes, captions["input_ids"][:, :-1],
                                           captions["attention_mask"][:, :-1])
        logits = full.score(features, task.vocabulary(full), "vocabulary")[..., ids]
        targets = torch.as_tensor([ids.index(int(t)) if m else -100 for t, m in
                                   zip(captions["input_ids"][:, 1:].flatten(), captions["attention_mask"][:, 1:].flatten())])
        expected = F.cross_entropy(logits.flatten(0, 1), targets, ignore_index=-100,
                                   label_smoothing=tiny_config.tasks["captioning"].label_smoothing)
    assert torch.allclose(loss, expected, atol=1e-5)

    # Saved with the model: the loaded one scores the same candidates and captions alike.
    predicted = TASKS["captioning"].predict(model, captions, max_length=8)
    loaded = unip2.load(unip2.save(model, tmp_path / "model")).eval()
    assert loaded.config.tasks["captioning"].token_ids == ids
    assert TASKS["captioning"].candidates(loaded)[0].tolist() == ids
    assert TASKS["captioning"].predict(loaded, captions, max_length=8) == predicted


def test_captions_use_only_the_candidate_tokens(tiny_config, embedded_data, monkeypatch):
    tokenizer = unip2.build_model(tiny_config).tokenizer
    ids = caption_token_ids(tokenizer, ["red circle"])
    torch.manual_seed(0)
    model = unip2.build_model(restricted(tiny_config, ids)).eval()
    steps = []

    def recording_beam_search(step, **kwargs):  # the real search, keeping what each step gave it
        return beam_search(lambda prefixes, rows: steps.append(step(prefixes, rows)) or steps[-1], **kwargs)

    monkeypatch.setattr(captioning, "beam_search", recording_beam_search)
    for row in TASKS["captioning"].predict(model, batch_of(model, embedded_data, "captioning"), max_length=8):
        assert set(row["caption"].split()) <= {"red", "circle"}, row["caption"]
    for log_probs in steps:  # N×V over token ids: a distribution over the candidates, nothing elsewhere
        assert log_probs.shape[1] == tokenizer.vocab_size
        assert torch.isfinite(log_probs[:, ids]).all() and torch.isinf(log_probs).sum() == log_probs.numel() - \
            len(ids) * log_probs.shape[0]
        assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(len(log_probs)), atol=1e-5)


def test_caption_vocabulary_options_are_checked(tiny_config):
    eos = unip2.build_model(tiny_config).tokenizer.eos_id
    wrong = copy.deepcopy(tiny_config)
    wrong.tasks["captioning"].token_ids = [eos]
    with pytest.raises(ConfigError, match="tasks.captioning.token_ids: only used with vocabulary"):
        validate(wrong)
    with pytest.raises(ConfigError, match="tasks.captioning.token_ids: must be distinct"):
        validate(restricted(tiny_config, [eos, eos]))
    with pytest.raises(ValueError, match="tasks.captioning.token_ids: empty under vocabulary: training_captions"):
        unip2.build_model(restricted(tiny_config, []))
    with pytest.raises(ValueError, match="tasks.captioning.token_ids: the end token .* is missing"):
        unip2.build_model(restricted(tiny_config, [eos + 1]))
    with pytest.raises(ValueError, match="tasks.captioning.token_ids: id 100000 is outside"):
        unip2.build_model(restricted(tiny_config, [eos, 100000]))
