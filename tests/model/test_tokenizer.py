"""Byte-level BPE tokenizer: special ids, round trips, truncation, padding, JSON, the shipped file, the CLI."""

import json

import numpy as np
import pytest

from unip2.model.tokenizer import SPECIAL_TOKENS, TextTokenizer, main, train_tokenizer
from unip2.presets import preset

SENTENCES = [
    "a small red circle to the left of a large blue square",
    "two green triangles on a dark background",
    "a picture of a blue star and a red square",
    "there are three objects in the image",
    "a large yellow circle at the top right of the picture",
    "four small shapes on a light background",
    "a green star is above a red triangle",
    "an orange square next to two purple circles",
]


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(tokenizer=train_tokenizer(SENTENCES * 20, vocab_size=320))


def test_special_tokens_have_roberta_ids(tokenizer):
    assert [tokenizer._tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 320


def test_round_trip_and_padding(tokenizer):
    texts = SENTENCES + ["Unseen wörds, punctuation & digits: 42!"]
    ids, mask = tokenizer.encode_batch(texts, max_length=64)
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape
    assert ids.shape[1] == mask.sum(1).max()  # padded to the longest, no further
    assert (ids[:, 0] == tokenizer.bos_id).all()
    for row, text in zip(range(len(texts)), texts):
        length = mask[row].sum()
        assert ids[row, length - 1] == tokenizer.eos_id
        assert (ids[row, length:] == tokenizer.pad_id).all() and (mask[row, length:] == 0).all()
        assert tokenizer.decode(ids[row]) == text
    assert tokenizer.decode_batch(ids[:2]) == texts[:2]


def test_truncation_keeps_the_end_token(tokenizer):
    ids, mask = tokenizer.encode_batch([SENTENCES[0], "a red"], max_length=6)
    assert ids.shape == (2, 6) and mask[0].all()
    assert ids[0, 0] == tokenizer.bos_id and ids[0, -1] == tokenizer.eos_id
    full, _ = tokenizer.encode_batch([SENTENCES[0]], max_length=64)
    assert (ids[0, 1:-1] == full[0, 1:5]).all()  # the first tokens of the text survive
    with pytest.raises(ValueError, match="max_length"):
        tokenizer.encode_batch(["a"], max_length=2)


def test_json_and_file_round_trip(tokenizer, tmp_path):
    again = TextTokenizer.from_json(tokenizer.to_json())
    a, _ = tokenizer.encode_batch(SENTENCES, 32)
    b, _ = again.encode_batch(SENTENCES, 32)
    assert np.array_equal(a, b)
    path = tmp_path / "tok.json"
    path.write_text(tokenizer.to_json())
    c, _ = TextTokenizer.from_file(path).encode_batch(SENTENCES, 32)
    assert np.array_equal(a, c)
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_file(tmp_path / "missing.json")


def test_vocabulary_too_small_for_the_bytes_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(SENTENCES, vocab_size=100)


def test_shipped_tokenizer_fits_the_tiny_preset():
    shipped = TextTokenizer.from_file(None)
    assert shipped.vocab_size <= preset("tiny").text.vocab_size
    assert (shipped.bos_id, shipped.pad_id, shipped.eos_id) == (0, 1, 2)
    ids, _ = shipped.encode_batch(SENTENCES, preset("tiny").text.max_length)
    assert [shipped.decode(row) for row in ids] == SENTENCES


def test_cli_trains_on_a_coco_style_folder(tmp_path):
    annotations = tmp_path / "data" / "coco" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "captions_train2017.json").write_text(json.dumps(
        {"annotations": [{"id": i, "image_id": i, "caption": s} for i, s in enumerate(SENTENCES * 10)]}))
    (annotations / "instances_train2017.json").write_text(json.dumps(
        {"categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue square"}]}))
    out = tmp_path / "tok.json"
    main(["--data", str(tmp_path / "data"), "--vocab-size", "300", "--out", str(out)])
    trained = TextTokenizer.from_file(out)
    assert trained.vocab_size <= 300
    ids, _ = trained.encode_batch(["red circle"], 16)
    assert trained.decode(ids[0]) == "red circle"


def test_padding_to_a_multiple_bounds_the_lengths(tokenizer):
    """A compiled run pads to multiples of 8 (never past max_length): a few shapes instead of every length."""
    bucketed = TextTokenizer.from_json(tokenizer.to_json())
    bucketed.pad_to_multiple_of = 8
    plain_ids, plain_mask = tokenizer.encode_batch(SENTENCES, max_length=64)
    ids, mask = bucketed.encode_batch(SENTENCES, max_length=64)
    assert ids.shape[1] % 8 == 0 and plain_ids.shape[1] <= ids.shape[1] < plain_ids.shape[1] + 8
    assert (ids[:, :plain_ids.shape[1]] == plain_ids).all() and (mask[:, :plain_mask.shape[1]] == plain_mask).all()
    assert (ids[:, plain_ids.shape[1]:] == tokenizer.pad_id).all() and (mask[:, plain_ids.shape[1]:] == 0).all()
    short, _ = bucketed.encode_batch(SENTENCES, max_length=6)
    assert short.shape[1] == 6  # capped at max_length
