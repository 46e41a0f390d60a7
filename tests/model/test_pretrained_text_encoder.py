"""Pretrained text encoders from transformers directories: RoBERTa and BERT families, base and masked-LM
checkpoints, every tensor loaded, positions per family, the directory's tokenizer, mismatches refused."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertModel, RobertaModel

from unip2.config import TextConfig
from unip2.model.text_encoder import TextEncoder, first_position
from unip2.model.tokenizer import TextTokenizer, tokenizer_for

OUT = 24
# Position rows of the saved models (tests/model/conftest.py): 40 tokens for both families.
BERT_POSITIONS, ROBERTA_POSITIONS = 40, 42
PAIRS = [("roberta", "base"), ("roberta", "mlm"), ("bert", "base"), ("bert", "mlm")]
MODEL_CLASS = {"roberta": RobertaModel, "bert": BertModel}


def text_config(directory, **overrides) -> TextConfig:
    return TextConfig(**{"pretrained_path": str(directory), "max_length": 16, **overrides})


def load(directory, **overrides) -> TextEncoder:
    cfg = text_config(directory, **overrides)
    return TextEncoder.from_config(cfg, OUT, tokenizer_for(cfg)).eval()


@pytest.mark.parametrize("family, kind", PAIRS)
def test_every_tensor_equals_the_saved_one(pretrained_dirs, family, kind):
    directory, saved = pretrained_dirs[family, kind]
    encoder = load(directory)
    assert type(encoder.model) is MODEL_CLASS[family]  # built as its own architecture
    loaded = encoder.model.state_dict()
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize("family, kind", PAIRS)
def test_a_missing_tensor_fails_naming_it(pretrained_dirs, tmp_path, family, kind):
    directory, _ = pretrained_dirs[family, kind]
    prefix = "" if kind == "base" else family + "."
    gone = prefix + "encoder.layer.1.output.dense.weight"
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in directory.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    state = load_file(str(directory / "model.safetensors"))
    assert gone in state
    save_file({k: v for k, v in state.items() if k != gone}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"text.pretrained_path: 1 text encoder tensor\(s\) missing .*"
                                         r"encoder\.layer\.1\.output\.dense\.weight"):
        load(broken)


def test_a_float16_checkpoint_loads_as_float32(make_pretrained_dir, tmp_path):
    saved = make_pretrained_dir(tmp_path / "half", "bert", "base")
    model = BertModel.from_pretrained(tmp_path / "half")
    model.half().save_pretrained(tmp_path / "half")
    encoder = load(tmp_path / "half")
    weight = encoder.model.embeddings.word_embeddings.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, saved["embeddings.word_embeddings.weight"].half().float())


def test_other_model_types_and_non_model_folders_are_refused(tmp_path):
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' model; supported: roberta"):
        TextEncoder.from_config(text_config(tmp_path / "gpt"), OUT)
    with pytest.raises(FileNotFoundError, match="text.pretrained_path: .* not a transformers model directory"):
        TextEncoder.from_config(text_config(tmp_path), OUT)


@pytest.mark.parametrize("family, rows, first", [("roberta", ROBERTA_POSITIONS, 2), ("bert", BERT_POSITIONS, 0)])
def test_positions_follow_the_family(pretrained_dirs, text_corpus, family, rows, first):
    directory, _ = pretrained_dirs[family, "base"]
    encoder = load(directory, max_length=40)  # 40 tokens fit both: rows 2..41 (RoBERTa), 0..39 (BERT)
    assert encoder.model.config.max_position_embeddings == rows and first_position(encoder.model.config) == first
    cfg = text_config(directory, max_length=41)
    with pytest.raises(ValueError, match=f"text.max_length: 41 tokens need {first + 41} position rows"):
        TextEncoder.from_config(cfg, OUT, tokenizer_for(cfg))
    # The positions the model's own embeddings give a text are the family's: 0.. for BERT, pad+1.. for RoBERTa.
    tokenizer = tokenizer_for(cfg)
    ids, mask = (torch.as_tensor(a) for a in tokenizer.encode_batch(text_corpus[:2], 40))
    with torch.no_grad():
        ours = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
        explicit = encoder.model(input_ids=ids, attention_mask=mask,
                                 position_ids=(torch.arange(ids.shape[1]) + first).expand_as(ids)).last_hidden_state
    real = mask.bool()
    assert torch.allclose(ours[real], explicit[real], atol=1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_and_causal_masks_work_for_both_families(pretrained_dirs, text_corpus, family, causal):
    directory, _ = pretrained_dirs[family, "mlm"]
    encoder = load(directory)
    ids, mask = (torch.as_tensor(a) for a in encoder_tokenizer(directory).encode_batch(text_corpus[:2], 16))
    with torch.no_grad():
        out = encoder(ids, mask, causal=causal)
        shorter = int(mask[1].sum())
        alone = encoder(ids[1:, :shorter], mask[1:, :shorter], causal=causal)
        assert torch.allclose(out[1, :shorter], alone[0], atol=1e-5)  # padding changes no real token
        changed = ids.clone()
        changed[:, 3] = ids[:, 4]
        diff = (encoder(changed, mask, causal=causal) - out).abs().amax(-1)
    assert (diff[:, 3] > 1e-4).all()
    assert ((diff[:, :3] < 1e-5) if causal else (diff[:, :3] > 1e-5)).all()  # earlier tokens see it only if not causal
    sdpa = encoder(ids, mask, causal=True)
    encoder.model.set_attn_implementation("eager")
    assert torch.allclose(encoder(ids, mask, causal=True), sdpa, atol=1e-5)


def encoder_tokenizer(directory) -> TextTokenizer:
    return tokenizer_for(text_config(directory))


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_the_directory_tokenizer_is_the_default(pretrained_dirs, text_corpus, family):
    directory, _ = pretrained_dirs[family, "base"]
    tokenizer = encoder_tokenizer(directory)
    reference = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    ids, mask = tokenizer.encode_batch(text_corpus, 32)
    for row, text in enumerate(text_corpus):
        assert ids[row, :mask[row].sum()].tolist() == reference(text).input_ids
        assert tokenizer.decode(ids[row]) == text
    assert tokenizer.vocab_size == len(reference) != TextTokenizer.from_file(None).vocab_size  # not the shipped one


def test_bert_special_tokens_and_real_words(pretrained_dirs):
    tokenizer = encoder_tokenizer(pretrained_dirs["bert", "mlm"][0])
    vocab = tokenizer._tokenizer.get_vocab()
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"])
    assert set(tokenizer.special_ids) == {vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    ids, _ = tokenizer.encode_batch(["A small red circle"], 16)
    assert ids[0, 0] == tokenizer.bos_id and ids[0, -1] == tokenizer.eos_id
    assert vocab["[UNK]"] not in ids[0].tolist()  # real words are words, not [UNK]
    assert tokenizer.decode(ids[0]) == "a small red circle"


def test_tokenizer_path_wins_over_the_directory(pretrained_dirs, text_corpus, tmp_path):
    roberta_dir, _ = pretrained_dirs["roberta", "base"]
    bert_dir, _ = pretrained_dirs["bert", "base"]
    from_dir = tokenizer_for(TextConfig(pretrained_path=str(bert_dir), tokenizer_path=str(roberta_dir)))
    json_file = tmp_path / "tokenizer.json"
    json_file.write_text(encoder_tokenizer(roberta_dir).to_json())
    from_file = tokenizer_for(TextConfig(pretrained_path=str(bert_dir), tokenizer_path=str(json_file)))
    expected, _ = encoder_tokenizer(roberta_dir).encode_batch(text_corpus, 32)
    assert np.array_equal(from_dir.encode_batch(text_corpus, 32)[0], expected)
    assert np.array_equal(from_file.encode_batch(text_corpus, 32)[0], expected)
    with pytest.raises(FileNotFoundError, match="text.tokenizer_path: no such file or directory"):
        tokenizer_for(TextConfig(tokenizer_path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="text.tokenizer_path: no tokenizer loads from"):
        tokenizer_for(TextConfig(tokenizer_path=str(tmp_path / "empty")))


def test_a_tokenizer_larger_than_the_embedding_is_refused_naming_both_sizes(pretrained_dirs):
    bert_dir, _ = pretrained_dirs["bert", "base"]
    roberta_dir, _ = pretrained_dirs["roberta", "base"]
    cfg = text_config(bert_dir, tokenizer_path=str(roberta_dir))
    tokenizer, rows = tokenizer_for(cfg), encoder_tokenizer(bert_dir).vocab_size
    assert tokenizer.vocab_size > rows
    with pytest.raises(ValueError, match=f"text.tokenizer_path: the tokenizer has {tokenizer.vocab_size} tokens but "
                                         f"the text encoder has {rows} embedding rows"):
        TextEncoder.from_config(cfg, OUT, tokenizer)


def test_special_ids_other_than_the_models_are_refused_naming_both(make_pretrained_dir, tmp_path):
    make_pretrained_dir(tmp_path / "bert", "bert", "base", pad_token_id=1)
    cfg = text_config(tmp_path / "bert")
    with pytest.raises(ValueError, match="text.pretrained_path: the tokenizer's pad id is 0 but the text encoder's "
                                         "config has pad_token_id 1"):
        TextEncoder.from_config(cfg, OUT, tokenizer_for(cfg))
    make_pretrained_dir(tmp_path / "roberta", "roberta", "base", eos_token_id=4)
    cfg = text_config(tmp_path / "roberta")
    with pytest.raises(ValueError, match="the tokenizer's eos id is 2 but the text encoder's config has eos_token_id 4"):
        TextEncoder.from_config(cfg, OUT, tokenizer_for(cfg))


@pytest.mark.parametrize("architecture", ["roberta", "bert", "xlm-roberta", "camembert"])
def test_random_init_builds_each_family_with_its_positions(architecture):
    torch.manual_seed(0)
    cfg = TextConfig(architecture=architecture, vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
                     intermediate_size=64, max_length=16)
    tokenizer = TextTokenizer.from_file(None)
    encoder = TextEncoder.from_config(cfg, OUT, tokenizer).eval()
    config = encoder.model.config
    assert config.model_type == architecture and config.pad_token_id == tokenizer.pad_id
    assert config.max_position_embeddings == first_position(config) + 16
    full = torch.full((2, 16), 7)
    assert encoder(full, torch.ones_like(full), causal=True).shape == (2, 16, OUT)  # max_length fits
    assert encoder.described(cfg) == cfg
