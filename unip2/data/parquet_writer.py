"""Writes rows of one dataset split as Parquet shards ``part-00000.parquet``, ``part-00001.parquet``, ...

At most ``rows_per_shard`` rows per file, written in row groups of ``row_group_rows`` so memory holds one
row group. Image bytes are stored uncompressed (they are JPEG/PNG already); other columns use zstd.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from unip2.data.parquet_schema import leaf_columns


class ShardedParquetWriter:
    """Append rows (dicts matching ``schema``); ``close()`` returns the shard names written, in order.

    ``filesystem`` (a pyarrow filesystem, e.g. S3's) writes there instead of the local disk, ``folder`` then being
    a path inside it; ``name`` formats each shard's file name from its index; ``write_empty`` writes one empty
    shard for a split without rows, so its schema stays readable.
    """

    def __init__(self, *, folder: str | Path, schema: pa.Schema, rows_per_shard: int = 1000,
                 row_group_rows: int = 256, filesystem: pafs.FileSystem | None = None,
                 name: str = "part-{index:05d}.parquet", write_empty: bool = True):
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError(f"rows_per_shard and row_group_rows must be >= 1, got {rows_per_shard}, {row_group_rows}")
        self.filesystem = filesystem or pafs.LocalFileSystem()
        self.folder = str(folder)
        self.filesystem.create_dir(self.folder, recursive=True)
        self.schema, self.name, self.write_empty = schema, name, write_empty
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.rows = 0
        self.shards: list[str] = []
        self._compression = {c: ("NONE" if c == "image" else "ZSTD") for c in leaf_columns(schema)}
        self._buffer: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= min(self.row_group_rows, self.rows_per_shard - self._rows_in_shard):
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            name = self.name.format(index=len(self.shards))
            self.shards.append(name)
            self._writer = pq.ParquetWriter(f"{self.folder}/{name}", self.schema, filesystem=self.filesystem,
                                            compression=self._compression)
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._rows_in_shard += len(self._buffer)
        self._buffer = []
        if self._rows_in_shard >= self.rows_per_shard:
            self._writer.close()
            self._writer, self._rows_in_shard = None, 0

    def close(self) -> list[str]:
        """Flush and close; an empty split gets one (empty) shard when ``write_empty``."""
        if self._buffer or (self.write_empty and not self.shards):
            self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self.shards)
