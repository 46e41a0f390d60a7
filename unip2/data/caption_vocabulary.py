"""Captioning's restricted candidate vocabulary: the token ids that occur in the training captions.

Under ``tasks.caption_vocabulary: training_captions`` a training run computes the set once, before it
starts (``pipelines/run/prepare.py``), and stores it in ``tasks.caption_token_ids``, which is saved with the
model so inference scores the same candidates.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from unip2.data.manifest import split_files
from unip2.model.tokenizer import TextTokenizer

CAPTIONS_COLUMN = "captions"


def caption_token_ids(tokenizer: TextTokenizer, captions: Iterable[str]) -> list[int]:
    """Sorted ids of every token in ``captions`` (bare text, as captioning's targets hold it: no start
    token) plus the end token, which every target caption ends with."""
    return sorted(tokenizer.token_ids_of(captions) | {tokenizer.eos_id})


def training_caption_token_ids(root: str | Path, datasets: list[str], tokenizer: TextTokenizer) -> list[int]:
    """``caption_token_ids`` of every caption of the ``datasets``' train splits in a converted data folder (read
    one shard at a time, only its captions column)."""
    ids = {tokenizer.eos_id}
    for path in (path for dataset in datasets for path in split_files(root, dataset, "train")):
        rows = pq.read_table(path, columns=[CAPTIONS_COLUMN]).column(CAPTIONS_COLUMN).to_pylist()
        ids |= tokenizer.token_ids_of(caption for captions in rows for caption in captions)
    return sorted(ids)
