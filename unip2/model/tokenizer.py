"""The text tokenizer: a ``tokenizers.Tokenizer`` with batch encoding, the one place a ``TextConfig``'s
tokenizer is found (``tokenizer_for``), and the training CLI of the byte-level BPE shipped with unip2.

    python -m unip2.model.tokenizer --data data/shapes --vocab-size 512 --out unip2/assets/tokenizer.json

The command trains on the COCO-format captions (``coco/annotations/captions_train2017.json``) and the
category names (``coco/annotations/instances_train2017.json``, and ``imagenet/LOC_synset_mapping.txt``
when present) of a data folder such as the one ``python -m unip2.data.synthetic`` writes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from unip2.config import TextConfig

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, as in RoBERTa
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.json"
# Accepted names per role: RoBERTa's and BERT's. bos starts every encoded text and a generated caption,
# eos ends them (BERT's [CLS] and [SEP] play those parts).
_ROLE_NAMES = {"pad": ("<pad>", "[PAD]"), "bos": ("<s>", "[CLS]"), "eos": ("</s>", "[SEP]")}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts``; the result adds ``<s> … </s>`` around every encoded text."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + len(alphabet)} "
                         f"(special tokens + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")),
                                                            add_prefix_space=False)
    return tokenizer


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with batch encoding to padded numpy arrays."""

    def __init__(self, *, tokenizer: Tokenizer, pad_to_multiple_of: int = 1):
        """``pad_to_multiple_of``: batches are padded to their longest text rounded up to this multiple (at most
        ``max_length``), so a compiled model sees a few text lengths, not every one (``train.compile``)."""
        self.pad_to_multiple_of = pad_to_multiple_of
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._ids = {role: self._find(role) for role in _ROLE_NAMES}

    def _find(self, role: str) -> int:
        for name in _ROLE_NAMES[role]:
            token_id = self._tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        raise ValueError(f"the tokenizer has no {role} token (looked for {list(_ROLE_NAMES[role])})")

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "TextTokenizer":
        """Load a ``tokenizers`` JSON file; None = the tokenizer shipped with unip2."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path} is not a `tokenizers` JSON file: {err}") from err
        return cls(tokenizer=backend)

    @classmethod
    def from_transformers(cls, path: str | Path, field: str = "text.tokenizer_path") -> "TextTokenizer":
        """The tokenizer of a local transformers directory, loaded by transformers' own loader
        (``AutoTokenizer``, local files only: ``tokenizer.json``, or a BERT ``vocab.txt`` it converts).

        Its pad, bos (``cls``) and eos (``sep``) tokens must be the ones this class finds by name.
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer  # here: importing transformers costs seconds

        try:
            loaded = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{field}: no tokenizer loads from {path}: {err}") from err
        backend = getattr(loaded, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ValueError(f"{field}: the tokenizer in {path} ({type(loaded).__name__}) has no `tokenizers` "
                             "backend")
        tokenizer = cls(tokenizer=Tokenizer.from_str(backend.to_str()))
        declared = {"pad": loaded.pad_token_id,
                    "bos": loaded.cls_token_id if loaded.cls_token_id is not None else loaded.bos_token_id,
                    "eos": loaded.sep_token_id if loaded.sep_token_id is not None else loaded.eos_token_id}
        for role, token_id in declared.items():
            if token_id is not None and token_id != getattr(tokenizer, f"{role}_id"):
                raise ValueError(f"{field}: the tokenizer in {path} declares {role} id {token_id} but its "
                                 f"{'/'.join(_ROLE_NAMES[role])} token has id {getattr(tokenizer, f'{role}_id')}")
        if tokenizer.vocab_size <= len(tokenizer.special_ids):
            raise ValueError(f"{field}: the tokenizer in {path} has no tokens besides its special ones")
        return tokenizer

    def save_transformers(self, folder: str | Path) -> None:
        """Write a transformers tokenizer directory (``tokenizer.json`` and its special tokens) that
        ``from_transformers`` and transformers' ``AutoTokenizer`` load back."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import PreTrainedTokenizerFast

        backend = self._tokenizer
        names = {role: backend.id_to_token(token_id) for role, token_id in self._ids.items()}
        roles = dict(pad_token=names["pad"], bos_token=names["bos"], eos_token=names["eos"])
        if names["bos"] == "[CLS]":  # BERT's family declares its ends as cls/sep
            roles.update(cls_token=names["bos"], sep_token=names["eos"])
        for role, candidates in (("unk_token", ("<unk>", "[UNK]")), ("mask_token", ("<mask>", "[MASK]"))):
            found = next((name for name in candidates if backend.token_to_id(name) is not None), None)
            if found is not None:
                roles[role] = found
        PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(backend.to_str()), **roles).save_pretrained(
            str(folder))

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        return cls(tokenizer=Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self._tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of every special token (pad, bos, eos, unk, mask...): never generated as words."""
        return tuple(sorted(self._tokenizer.token_to_id(t.content)
                            for t in self._tokenizer.get_added_tokens_decoder().values() if t.special))

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """texts → (ids, attention_mask), both int64 B×L with L = the longest encoding (≤ max_length), rounded up
        to a multiple of ``pad_to_multiple_of`` (≤ max_length).

        Special tokens included; a text over ``max_length`` is cut so that its end token is kept.
        Padding uses ``pad_id`` and attention_mask 0.
        """
        special = self._tokenizer.num_special_tokens_to_add(is_pair=False)
        if max_length <= special:
            raise ValueError(f"max_length must be > {special} (the special tokens), got {max_length}")
        # Truncate the bare text, then add the special tokens: the end token survives, and the shared
        # tokenizer is never reconfigured (safe to call from several threads).
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for encoding in encodings:
            encoding.truncate(max_length - special)
        encodings = [self._tokenizer.post_process(encoding) for encoding in encodings]
        length = max((len(e.ids) for e in encodings), default=0)
        if self.pad_to_multiple_of > 1:
            length = min(max_length, -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of)
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        return ids, mask

    def token_ids_of(self, texts: Iterable[str], batch_size: int = 4096) -> set[int]:
        """Ids of every token of ``texts``, special tokens not added."""
        ids: set[int] = set()
        texts = iter(texts)
        while batch := [text for _, text in zip(range(batch_size), texts)]:
            for encoding in self._tokenizer.encode_batch(batch, add_special_tokens=False):
                ids.update(encoding.ids)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Token ids (1-D list, array or tensor) → text, special tokens skipped."""
        ids = [int(i) for i in ids]
        return self._tokenizer.decode(ids, skip_special_tokens=True).strip()

    def decode_batch(self, ids: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]


def tokenizer_for(text: TextConfig) -> TextTokenizer:
    """The tokenizer of a text config: ``tokenizer_path`` (a ``tokenizers`` JSON file or a transformers
    directory), else the one in ``pretrained_path``'s directory, else the byte-level BPE shipped with unip2."""
    if text.tokenizer_path is not None:
        path, field = Path(text.tokenizer_path), "text.tokenizer_path"
    elif text.pretrained_path is not None:
        path, field = Path(text.pretrained_path), "text.pretrained_path"
    else:
        return TextTokenizer.from_file(None)
    if path.is_file():
        return TextTokenizer.from_file(path)
    if path.is_dir():
        return TextTokenizer.from_transformers(path, field)
    raise FileNotFoundError(f"{field}: no such file or directory: {path}")


def training_texts(data_dir: str | Path) -> list[str]:
    """Captions and category names of a COCO/ImageNet-format data folder (see the module docstring)."""
    root = Path(data_dir)
    captions_path = root / "coco" / "annotations" / "captions_train2017.json"
    if not captions_path.is_file():
        raise FileNotFoundError(f"no captions file at {captions_path}")
    texts = [a["caption"] for a in json.loads(captions_path.read_text())["annotations"]]
    instances_path = root / "coco" / "annotations" / "instances_train2017.json"
    if instances_path.is_file():
        texts += [c["name"] for c in json.loads(instances_path.read_text())["categories"]]
    synsets_path = root / "imagenet" / "LOC_synset_mapping.txt"
    if synsets_path.is_file():
        texts += [line.split(" ", 1)[1] for line in synsets_path.read_text().splitlines() if " " in line]
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data folder holding coco/annotations/*.json")
    parser.add_argument("--vocab-size", type=int, default=512, help="largest vocabulary (BPE may stop below)")
    parser.add_argument("--out", default=str(DEFAULT_PATH), help="tokenizer JSON to write")
    args = parser.parse_args(argv)
    texts = training_texts(args.data)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    print(f"trained on {len(texts)} texts: vocabulary {tokenizer.get_vocab_size()} → {out}")


if __name__ == "__main__":
    main()
