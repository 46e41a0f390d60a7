"""Where WebDataset shards are: local folders, ``s3://`` (any pyarrow) URIs, and brace patterns.

    expand_braces("s3://b/cc3m/{00000..00002}.tar")  # -> [".../00000.tar", ".../00001.tar", ".../00002.tar"]
    list_shards("/data/cc3m")                        # -> the folder's *.tar files, sorted by name
    list_shards("s3://b/laion/{00000..00127}.tar")   # -> the expansion (only the first shard is checked)

A source is one of: a ``.tar`` file, a folder / URI prefix (its ``*.tar`` files, not recursive: how
img2dataset lays out its output, next to ``*.parquet`` and ``*_stats.json`` that are ignored), or a brace
pattern (``{a..b}`` numeric ranges keeping the zero padding, ``{x,y}`` alternatives, several groups
allowed). A pattern is expanded without listing (a prefix with 10^5 objects need not be listed), and
only its first shard is checked to exist: a typo fails at once, a missing shard later is counted.
``split_uri`` and ``expand_braces`` touch no filesystem (and no network).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pyarrow.fs as pafs

_GROUP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def split_uri(source: str) -> tuple[str | None, str]:
    """(scheme, the rest) of ``scheme://rest``; (None, path) for a local path (``C:\\`` is no scheme)."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+)://(.*)$", source)
    if match is None:
        return None, source
    return match.group(1).lower(), match.group(2)


def is_uri(source: str) -> bool:
    return split_uri(source)[0] is not None


def _alternatives(body: str, pattern: str) -> list[str]:
    match = _RANGE.match(body)
    if match is None:
        if "," not in body:
            raise ValueError(f"{pattern}: brace group {{{body}}} is neither a range {{a..b}} nor a list {{x,y}}")
        return body.split(",")
    first, last = match.group(1), match.group(2)
    start, stop = int(first), int(last)
    if stop < start:
        raise ValueError(f"{pattern}: range {{{body}}} runs backwards")
    # Zero padding as braceexpand / img2dataset shard names: the width of the padded bound.
    width = max(len(first), len(last)) if first.startswith("0") or last.startswith("0") else 0
    return [str(n).zfill(width) for n in range(start, stop + 1)]


def expand_braces(pattern: str) -> list[str]:
    """Every string the pattern names, in order (the last group varies fastest). No braces: [pattern]."""
    if pattern.count("{") != pattern.count("}") or re.search(r"\{[^}]*\{", pattern):
        raise ValueError(f"{pattern}: unbalanced or nested braces")
    pieces = _GROUP.split(pattern)  # literal, group, literal, group, ..., literal
    literals, groups = pieces[0::2], pieces[1::2]
    choices = [_alternatives(body, pattern) for body in groups]
    expanded = []
    for combination in itertools.product(*choices):
        parts = [literals[0]]
        for value, literal in zip(combination, literals[1:]):
            parts += [value, literal]
        expanded.append("".join(parts))
    return expanded


def filesystem_of(source: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) of a local path or a URI (resolving ``s3://`` may reach the
    network, e.g. for the bucket's region)."""
    if is_uri(source):
        return pafs.FileSystem.from_uri(source)
    return pafs.LocalFileSystem(), str(Path(source).expanduser().resolve())


def list_shards(source: str) -> list[str]:
    """The ``.tar`` shards of one source (see the module docstring), as local paths or URIs."""
    if "{" in source or "}" in source:
        shards = expand_braces(source)
        filesystem, first = filesystem_of(shards[0])
        if filesystem.get_file_info(first).type != pafs.FileType.File:
            raise FileNotFoundError(f"web pairs: no shard at {shards[0]} (first of the {len(shards)} that "
                                    f"{source} names)")
        return shards if is_uri(source) else [filesystem_of(s)[1] for s in shards]
    filesystem, path = filesystem_of(source)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        if not path.endswith(".tar"):
            raise ValueError(f"web pairs: {source} is not a .tar shard")
        return [source if is_uri(source) else path]
    if info.type != pafs.FileType.Directory and not is_uri(source):
        raise FileNotFoundError(f"web pairs: no such file or folder: {source}")
    try:
        listed = filesystem.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=False))
    except FileNotFoundError:
        listed = []
    names = sorted(i.base_name for i in listed if i.type == pafs.FileType.File and i.base_name.endswith(".tar"))
    if not names:
        raise FileNotFoundError(f"web pairs: no .tar shards in {source}")
    # Written back in the source's own form, so a URI keeps its scheme and host.
    base = source.rstrip("/") if is_uri(source) else path
    return [f"{base}/{name}" for name in names]
