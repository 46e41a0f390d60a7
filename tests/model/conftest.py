"""Pretrained text encoders as users have them: tiny random RoBERTa and BERT models saved by transformers
(a base model, and a ``*ForMaskedLM`` whose keys carry the ``roberta.``/``bert.`` prefix), each directory
holding its tokenizer (a byte-level BPE saved by ``PreTrainedTokenizerFast``; a WordPiece ``vocab.txt``)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (BertConfig, BertForMaskedLM, BertModel, PreTrainedTokenizerFast,  # noqa: E402
                          RobertaConfig, RobertaForMaskedLM, RobertaModel)

from unip2.model.tokenizer import train_tokenizer  # noqa: E402

CORPUS = [
    "a small red circle to the left of a large blue square",
    "two green triangles on a dark background",
    "a picture of a blue star and a red square",
    "there are three objects in the image",
    "a large yellow circle at the top right of the picture",
    "four small shapes on a light background",
    "a green star is above a red triangle",
    "an orange square next to two purple circles",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Position rows of the saved models: 40 tokens for BERT (from 0), 40 for RoBERTa (from pad id 1 + 1).
BERT_POSITIONS, ROBERTA_POSITIONS = 40, 42
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
FAMILIES = {"roberta": (RobertaConfig, RobertaModel, RobertaForMaskedLM),
            "bert": (BertConfig, BertModel, BertForMaskedLM)}


def roberta_tokenizer() -> Tokenizer:
    return train_tokenizer(CORPUS * 20, vocab_size=300)


def bert_tokenizer() -> Tokenizer:
    """A WordPiece tokenizer as BERT's: lower case, [CLS] text [SEP]."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(CORPUS * 20, trainers.WordPieceTrainer(vocab_size=150, special_tokens=BERT_SPECIALS,
                                                                         show_progress=False))
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return tokenizer


def save_tokenizer(family: str, directory) -> int:
    """Write ``family``'s tokenizer into ``directory`` as users have it → its vocabulary size."""
    if family == "roberta":
        backend = roberta_tokenizer()
        PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>", mask_token="<mask>").save_pretrained(directory)
    else:  # a classic BERT folder: vocab.txt only, read by transformers' BertTokenizer
        backend = bert_tokenizer()
        vocab = sorted(backend.get_vocab().items(), key=lambda item: item[1])
        (directory / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
        (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return backend.get_vocab_size()


def model_config(family: str, vocab_size: int, **overrides):
    config_class = FAMILIES[family][0]
    if family == "roberta":
        ids = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, max_position_embeddings=ROBERTA_POSITIONS)
    else:
        ids = dict(pad_token_id=0, max_position_embeddings=BERT_POSITIONS)
    return config_class(vocab_size=vocab_size, **SIZES, **{**ids, **overrides})


def save_pretrained_dir(directory, family: str, kind: str, **overrides) -> dict[str, torch.Tensor]:
    """A ``kind`` ("base" or "mlm") model of ``family`` with its tokenizer in ``directory`` → the saved
    encoder tensors by the base model's names (prefix stripped)."""
    directory.mkdir(parents=True)
    vocab_size = save_tokenizer(family, directory)
    _, base_class, mlm_class = FAMILIES[family]
    torch.manual_seed(1)
    model = (base_class if kind == "base" else mlm_class)(model_config(family, vocab_size, **overrides))
    model.save_pretrained(directory)
    prefix = "" if kind == "base" else family + "."
    return {k.removeprefix(prefix): v.clone() for k, v in model.state_dict().items()
            if k.startswith(prefix) and not k.removeprefix(prefix).startswith("pooler.")}


@pytest.fixture(scope="session")
def pretrained_dirs(tmp_path_factory):
    """(family, kind) → (directory, saved encoder tensors) for RoBERTa and BERT, base and masked-LM."""
    root = tmp_path_factory.mktemp("pretrained_text")
    return {(family, kind): (root / f"{family}-{kind}", save_pretrained_dir(root / f"{family}-{kind}", family, kind))
            for family in FAMILIES for kind in ("base", "mlm")}


@pytest.fixture(scope="session")
def make_pretrained_dir():
    """``save_pretrained_dir`` itself, for tests that need a variant (other ids, another dtype)."""
    return save_pretrained_dir


@pytest.fixture(scope="session")
def text_corpus() -> list[str]:
    """The sentences the saved tokenizers were trained on."""
    return list(CORPUS)
