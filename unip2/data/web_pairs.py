"""Web image-text pairs in WebDataset tar shards (as img2dataset writes them) → Parquet of the captions schema.

    result = convert_shard("s3://b/cc3m/00000.tar", "s3://b/unip2/web_pairs/train/part-00000",
                           rows_per_file=1000)
    # {"files": [".../part-00000-000.parquet", ...], "rows": 9873, "skipped": {"missing_caption": 3, ...}}

A shard holds samples as consecutive tar members sharing a key: ``{key}.jpg`` (or .png / .webp / .jpeg)
plus the caption in ``{key}.txt``, or in the ``"caption"`` field of ``{key}.json`` (img2dataset writes its
metadata there: url, status, width, height, ... and the caption when it was given a caption column). A
``.txt`` caption wins over the JSON one. One sample becomes one row of ``SCHEMAS["web_pairs"]`` (the
``coco_captions`` columns, so both can be read as one row space): ``captions`` = [the caption],
``image_id`` = the key as a number (img2dataset keys are shard number + index digits; another key: a
stable 63-bit hash of it), ``file_name`` = ``{key}.{ext}``.

Samples that cannot train are skipped and counted by reason: ``missing_image``, ``undecodable_image``,
``truncated_image``, ``empty_image``, ``missing_caption`` (no .txt and no JSON caption), ``empty_caption``
(blank after stripping), ``undecodable_caption`` (not UTF-8 / not JSON). Shard-level: ``missing_shard``,
``unreadable_shard`` (a corrupt or cut-off tar: the samples before the damaged one are kept).

The tar is read as a stream (``r|``, no seeking: S3 objects stream as they are read) and rows are
written in row groups, so memory holds one row group, whatever the shard size. Pure Python + pyarrow;
``pipelines/data/web_pairs.py`` runs this over every shard with Ray Data.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from collections.abc import Iterator

from unip2.data.images import check_image
from unip2.data.parquet_schema import SCHEMAS
from unip2.data.parquet_writer import ShardedParquetWriter
from unip2.data.shard_paths import filesystem_of, is_uri

SCHEMA = SCHEMAS["web_pairs"]
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_IMAGE_REASONS = {"undecodable": "undecodable_image", "truncated": "truncated_image", "empty_file": "empty_image"}


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member as WebDataset groups them: the key runs up to the first dot of
    the file name (``a/000012.jpg`` → (``a/000012``, ``jpg``)); a name without a dot → None."""
    folder, _, name = member_name.rpartition("/")
    if "." not in name or name.startswith("."):
        return None
    stem, extension = name.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class _EndWatch:
    """A read-only stream that remembers whether it reached its end and the last tar block it gave."""

    def __init__(self, stream):
        self.stream, self.tail, self.at_end = stream, b"", False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.tail = (self.tail + data)[-tarfile.BLOCKSIZE:]
        else:
            self.at_end = True
        return data


def iter_samples(stream) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each run of consecutive members with the same key, in tar order.

    Raises ``tarfile.TarError`` / ``EOFError`` where the (uncompressed, as img2dataset writes it) tar is
    damaged, after yielding every sample before the one being read there. A tar cut at a member boundary
    reads like a shorter tar to ``tarfile``; it is told apart by its missing end-of-archive zero blocks.
    """
    key, files = None, {}
    watch = _EndWatch(stream)
    with tarfile.open(fileobj=watch, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            parsed = sample_key(member.name)
            if parsed is None:
                continue
            if parsed[0] != key:
                if key is not None:
                    yield key, files
                key, files = parsed[0], {}
            files[parsed[1]] = archive.extractfile(member).read()
    if watch.at_end and watch.tail != bytes(len(watch.tail)):  # its last sample may be cut too: not yielded
        raise tarfile.ReadError("the tar ends without its end-of-archive blocks: cut short")
    if key is not None:
        yield key, files


def image_id_of(key: str) -> int:
    """img2dataset's numeric key as is; any other key → a stable non-negative 63-bit hash of it."""
    stem = key.rpartition("/")[2]
    if stem.isdigit() and int(stem) < 2 ** 63:
        return int(stem)
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def caption_of(files: dict[str, bytes]) -> tuple[str | None, str | None]:
    """(caption, None) or (None, reason) from the sample's ``.txt``, else its ``.json`` ``caption``."""
    if "txt" in files:
        try:
            text = files["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return None, "undecodable_caption"
    elif "json" in files:
        try:
            text = json.loads(files["json"]).get("caption")
        except (ValueError, AttributeError):  # not JSON (ValueError), or JSON but not an object
            return None, "undecodable_caption"
        if not isinstance(text, str):
            return None, "missing_caption"
    else:
        return None, "missing_caption"
    text = text.strip()
    return (text, None) if text else (None, "empty_caption")


def sample_row(key: str, files: dict[str, bytes]) -> tuple[dict | None, str | None]:
    """One row of ``SCHEMA`` from a sample, or (None, the reason it is skipped)."""
    extension = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if extension is None:
        return None, "missing_image"
    check = check_image(files[extension])
    if not check.ok:
        return None, _IMAGE_REASONS.get(check.reason, "undecodable_image")
    caption, reason = caption_of(files)
    if reason is not None:
        return None, reason
    return {"image": files[extension], "image_id": image_id_of(key),
            "file_name": f"{key.rpartition('/')[2]}.{extension}", "width": check.width, "height": check.height,
            "captions": [caption]}, None


def convert_shard(shard: str, out_prefix: str, *, rows_per_file: int = 1000, row_group_rows: int = 256) -> dict:
    """Convert one tar shard (local path or URI) to Parquet files ``{out_prefix}-NNN.parquet`` (path or URI).

    Returns {"files": [path or URI of each file, in row order], "rows": int, "skipped": {reason: count}}.
    Writing the same shard again rewrites the same files, so a retried task is harmless.
    """
    skipped: Counter = Counter()
    in_fs, in_path = filesystem_of(shard)
    out_fs, out_path = filesystem_of(out_prefix)
    if is_uri(out_prefix) and not out_prefix.endswith(out_path):
        raise ValueError(f"web pairs output {out_prefix}: URI options (?...) are not supported")
    folder, _, stem = out_path.rpartition("/")
    writer = ShardedParquetWriter(folder=folder, schema=SCHEMA, rows_per_shard=rows_per_file,
                                  row_group_rows=row_group_rows, filesystem=out_fs, name=stem + "-{index:03d}.parquet",
                                  write_empty=False)
    try:
        stream = in_fs.open_input_stream(in_path)
    except FileNotFoundError:
        skipped["missing_shard"] += 1
    else:
        with stream:
            try:
                for key, files in iter_samples(stream):
                    row, reason = sample_row(key, files)
                    if reason is not None:
                        skipped[reason] += 1
                    else:
                        writer.write(row)
            except (tarfile.TarError, EOFError):  # damaged archive; I/O errors propagate (the task fails)
                skipped["unreadable_shard"] += 1
    files = [f"{folder}/{name}" for name in writer.close()]
    if is_uri(out_prefix):  # the files as URIs again (scheme + authority before the filesystem path)
        files = [out_prefix[:len(out_prefix) - len(out_path)] + f for f in files]
    return {"files": files, "rows": writer.rows, "skipped": dict(sorted(skipped.items()))}
