"""Reader of Karpathy split files: ``dataset_coco.json`` and ``dataset_flickr30k.json``.

Format: ``{"dataset": ..., "images": [{"split": "train"|"restval"|"val"|"test", "filename": ...,
"imgid": ..., "sentences": [{"raw": ..., "tokens": [...]}, ...], ...}]}``. COCO entries also carry
``filepath`` (e.g. "val2014") and ``cocoid``; Flickr30k entries have neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unip2.data.coco import load_json

KARPATHY_SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class KarpathyImage:
    """One entry; ``index`` is ``imgid`` (its position in the file when absent)."""

    index: int
    split: str
    filename: str
    filepath: str | None
    cocoid: int | None
    captions: list[str]  # raw sentences, surrounding spaces removed
    tokens: list[list[str]]


@dataclass(frozen=True)
class KarpathySplits:
    dataset: str
    images: list[KarpathyImage]


def load_karpathy(path: str | Path) -> KarpathySplits:
    """Read a Karpathy split file; refuses entries with an unknown split or no filename, naming the file."""
    path = Path(path)
    payload = load_json(path, required_keys=("images",))
    images = []
    for position, entry in enumerate(payload["images"]):
        split = entry.get("split")
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"{path}: image #{position} has split {split!r}, expected one of {KARPATHY_SPLITS}")
        if not entry.get("filename"):
            raise ValueError(f"{path}: image #{position} has no 'filename'")
        sentences = entry.get("sentences", [])
        images.append(KarpathyImage(
            index=int(entry.get("imgid", position)),
            split=split,
            filename=str(entry["filename"]),
            filepath=entry.get("filepath"),
            cocoid=int(entry["cocoid"]) if "cocoid" in entry else None,
            captions=[str(s.get("raw", "")).strip() for s in sentences],
            tokens=[list(s.get("tokens", [])) for s in sentences],
        ))
    return KarpathySplits(dataset=str(payload.get("dataset", "")), images=images)
