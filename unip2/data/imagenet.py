"""Reader of the ImageNet (ILSVRC-2012 CLS-LOC) folder layout and its synset mapping file.

Accepted roots (the mapping file ``LOC_synset_mapping.txt`` beside the split folders or at the root):

    ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG            class folders for both splits
    ROOT/ILSVRC/Data/CLS-LOC/{train,val}/...                     the Kaggle download
    a flat ``val/`` of ILSVRC2012_val_*.JPEG + ROOT/LOC_val_solution.csv (first wnid of each row)

Labels index the mapping file's wnids in sorted order; a class name is the first synonym of its line
("n01440764 tench, Tinca tinca" -> "tench"). Files in folders of unknown wnids, and flat val files with
no solution row, are dropped and counted (``unknown_wnid``, ``unlabelled``).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_SOLUTION_FILE = "LOC_val_solution.csv"


@dataclass(frozen=True)
class ImageNetLayout:
    root: Path
    mapping_file: Path
    split_dirs: dict[str, Path]
    val_solution: Path | None


@dataclass(frozen=True)
class ImageNetFile:
    path: Path
    file_name: str  # relative to the split folder, e.g. "n01440764/n01440764_10026.JPEG"
    wnid: str
    label: int


def load_synset_mapping(path: str | Path) -> dict[str, str]:
    """wnid -> class name (first synonym), ordered by sorted wnid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"synset mapping file not found: {path}")
    synonyms: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, rest = line.strip().partition(" ")
        words = [w.strip() for w in rest.split(",") if w.strip()]
        if not wnid.startswith("n") or not words:
            raise ValueError(f"{path}:{number}: expected '<wnid> <name>[, synonyms]', got {line!r}")
        synonyms[wnid] = words
    if not synonyms:
        raise ValueError(f"{path} holds no synsets")
    return dict(sorted(_unique_names(synonyms).items()))


def _unique_names(synonyms: dict[str, list[str]]) -> dict[str, str]:
    """First synonym as the name; where several synsets share it (ImageNet has "crane" twice, the bird
    and the machine), the model could not tell them apart, so those take "first, second" synonyms,
    and the wnid where even that collides."""
    first = Counter(words[0] for words in synonyms.values())
    names = {wnid: words[0] if first[words[0]] == 1 else ", ".join(words[:2]) for wnid, words in synonyms.items()}
    repeated = Counter(names.values())
    return {wnid: name if repeated[name] == 1 else f"{name} ({wnid})" for wnid, name in names.items()}


def find_imagenet(root: str | Path) -> ImageNetLayout:
    """Locate the split folders and the mapping file under ``root``; refuses a wrong root, naming it."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root not found: {root}")
    for data_dir in (root, root / "ILSVRC" / "Data" / "CLS-LOC"):
        split_dirs = {s: data_dir / s for s in ("train", "val") if (data_dir / s).is_dir()}
        if split_dirs:
            break
    else:
        raise ValueError(f"ImageNet root {root} has no train/ or val/ folder (nor ILSVRC/Data/CLS-LOC/train|val)")
    mapping = next((d / MAPPING_FILE for d in (root, data_dir) if (d / MAPPING_FILE).is_file()), None)
    if mapping is None:
        raise FileNotFoundError(f"ImageNet root {root} lacks {MAPPING_FILE} (expected {root / MAPPING_FILE})")
    solution = next((d / VAL_SOLUTION_FILE for d in (root, data_dir) if (d / VAL_SOLUTION_FILE).is_file()), None)
    return ImageNetLayout(root=root, mapping_file=mapping, split_dirs=split_dirs, val_solution=solution)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_split(layout: ImageNetLayout, split: str, wnids: list[str]) -> tuple[list[ImageNetFile], Counter]:
    """The split's labelled files sorted by (wnid, name), and the files dropped by reason."""
    folder = layout.split_dirs[split]
    labels = {wnid: i for i, wnid in enumerate(wnids)}
    files, dropped = [], Counter()
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if class_dirs:
        for class_dir in class_dirs:
            images = _image_files(class_dir)
            if class_dir.name not in labels:
                dropped["unknown_wnid"] += len(images)
                continue
            files += [ImageNetFile(path=p, file_name=f"{class_dir.name}/{p.name}", wnid=class_dir.name,
                                   label=labels[class_dir.name]) for p in images]
        return files, dropped
    if layout.val_solution is None:
        raise FileNotFoundError(f"{folder} has no class folders and no {VAL_SOLUTION_FILE} was found beside it")
    with layout.val_solution.open(newline="") as handle:
        solution = {row["ImageId"]: row["PredictionString"].split()[0]
                    for row in csv.DictReader(handle) if row.get("PredictionString")}
    for path in _image_files(folder):
        wnid = solution.get(path.stem)
        if wnid is None:
            dropped["unlabelled"] += 1
        elif wnid not in labels:
            dropped["unknown_wnid"] += 1
        else:
            files.append(ImageNetFile(path=path, file_name=path.name, wnid=wnid, label=labels[wnid]))
    files.sort(key=lambda f: (f.wnid, f.file_name))
    return files, dropped
