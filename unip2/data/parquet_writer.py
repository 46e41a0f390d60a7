"""Writes rows of one dataset split as Parquet shards ``part-00000.parquet``, ``part-00001.parquet``, ...

At most ``rows_per_shard`` rows per file, written in row groups of ``row_group_rows`` so memory holds one
row group. Image bytes are stored uncompressed (they are JPEG/PNG already); other columns use zstd.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unip2.data.parquet_schema import leaf_columns


class ShardedParquetWriter:
    """Append rows (dicts matching ``schema``); ``close()`` returns the shard names written, in order."""

    def __init__(self, *, folder: str | Path, schema: pa.Schema, rows_per_shard: int = 1000,
                 row_group_rows: int = 256):
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError(f"rows_per_shard and row_group_rows must be >= 1, got {rows_per_shard}, {row_group_rows}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
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
            name = f"part-{len(self.shards):05d}.parquet"
            self.shards.append(name)
            self._writer = pq.ParquetWriter(self.folder / name, self.schema, compression=self._compression)
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self._rows_in_shard += len(self._buffer)
        self._buffer = []
        if self._rows_in_shard >= self.rows_per_shard:
            self._writer.close()
            self._writer, self._rows_in_shard = None, 0

    def close(self) -> list[str]:
        """Flush and close; an empty split still gets one (empty) shard so its schema is readable."""
        if self._buffer or not self.shards:
            self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return list(self.shards)
