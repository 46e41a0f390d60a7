"""Random access to the rows of one converted split, by row id (rows numbered in shard order).

The training plan (``unip2.sampling``) names the rows each worker reads at each step; this reader
fetches them. Several datasets of one schema (``coco_captions`` + ``web_pairs``) read as one split: their
shards in the order given, so rows are numbered dataset after dataset. Shards are opened lazily and the most recent ones kept in memory, which is all a
windowed shuffle needs.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unip2.data.manifest import split_files


class RowReader:
    """Rows of ``dataset``/``split`` (or of several datasets' ``split``, concatenated) under a converted
    ``root`` folder.

    read(row_ids) → {column: list of values} in the order of ``row_ids`` (ids may repeat).
    """

    def __init__(self, root: str | Path, dataset: str | list[str], split: str, *, cached_shards: int = 8,
                 columns: list[str] | None = None):
        datasets = [dataset] if isinstance(dataset, str) else list(dataset)
        self.files = [path for name in datasets for path in split_files(root, name, split)]
        self.columns = columns
        counts = [pq.ParquetFile(path).metadata.num_rows for path in self.files]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_rows = int(self.starts[-1])
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._cached_shards = cached_shards

    def _shard(self, index: int) -> pa.Table:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        table = pq.read_table(self.files[index], columns=self.columns)
        self._cache[index] = table
        if len(self._cache) > self._cached_shards:
            self._cache.popitem(last=False)
        return table

    def read(self, row_ids: np.ndarray | list[int]) -> dict[str, list]:
        row_ids = np.asarray(row_ids, dtype=np.int64)
        if row_ids.size and (row_ids.min() < 0 or row_ids.max() >= self.num_rows):
            raise IndexError(f"row ids must be in [0, {self.num_rows}), got {row_ids.min()}..{row_ids.max()}")
        shards = np.searchsorted(self.starts, row_ids, side="right") - 1
        parts, order = [], []
        for shard in np.unique(shards):
            hit = np.flatnonzero(shards == shard)
            parts.append(self._shard(int(shard)).take(pa.array(row_ids[hit] - self.starts[shard])))
            order.append(hit)
        if not parts:
            return {}
        table = pa.concat_tables(parts)
        inverse = np.argsort(np.concatenate(order), kind="stable")
        table = table.take(pa.array(inverse))
        return {name: table.column(name).to_pylist() for name in table.column_names}
