"""The restricted caption vocabulary: the token ids of a converted folder's training captions, plus the end token."""

from unip2.data.caption_vocabulary import caption_token_ids, training_caption_token_ids
from unip2.data.manifest import read_table
from unip2.model.tokenizer import TextTokenizer


def test_the_training_captions_tokens_and_the_end_token(embedded_data):
    tokenizer = TextTokenizer.from_file(None)
    captions = [c for row in read_table(embedded_data, "coco_captions", "train", ["captions"])["captions"].to_pylist()
                for c in row]
    ids = training_caption_token_ids(embedded_data, ["coco_captions"], tokenizer)
    assert ids == caption_token_ids(tokenizer, captions) == sorted(set(ids))
    assert tokenizer.eos_id in ids and tokenizer.bos_id not in ids and tokenizer.pad_id not in ids
    encoded, mask = tokenizer.encode_batch(captions, 256)
    assert set(encoded[mask == 1].tolist()) - {tokenizer.bos_id} == set(ids)  # every target token, nothing else
    assert len(ids) < tokenizer.vocab_size


def test_token_ids_of_reads_any_iterable_in_batches():
    tokenizer = TextTokenizer.from_file(None)
    texts = ["a red circle", "a blue square", "two green triangles"]
    expected = tokenizer.token_ids_of(texts)
    assert tokenizer.token_ids_of(iter(texts), batch_size=2) == expected
    assert caption_token_ids(tokenizer, []) == [tokenizer.eos_id]
