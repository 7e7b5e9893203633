"""The caller's item ids behind index ids, so that readers answer in the caller's ids.

Decoders map each caller id to an int64 index id (`stream.ids.to_index_ids`); where the
two differ (string ids, integers outside [0, 2**56)) the decoded batch carries the
caller's id in its ``item_key`` column. `ItemKeys` keeps those pairs for the items the
catalogue holds (added with their events, removed with their eviction, checkpointed
with the catalogue), and each on-disk index version gets a copy for serving processes.
An index id is a function of its key, so a pair never changes once learnt: readers look
keys up in the live map without versioning; a key is dropped only after the version
that removed its item is published. Ids without an entry are their own
caller id (small integers), which costs nothing for logs with integer ids.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stream.events import ITEM_KEY_COLUMN as KEY_COLUMN

ID_COLUMN = "item_id"


class ItemKeys:
    """Index id -> caller's item id (a string). Thread-safe; ``generation`` moves on every change."""

    def __init__(self) -> None:
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def observe(self, table: pa.Table) -> None:
        """Remember the ``item_key`` of every row that has one (a decoded batch; no-op without the column)."""
        if KEY_COLUMN not in table.schema.names:
            return
        keys = table.column(KEY_COLUMN)
        if keys.null_count == len(keys):
            return
        has_key = keys.is_valid().to_numpy(zero_copy_only=False)
        ids = table.column(ID_COLUMN).to_numpy()[has_key]
        values = keys.filter(pa.array(has_key)).to_pylist()
        with self._lock:
            before = len(self._keys)
            self._keys.update(zip(ids.tolist(), values))
            if len(self._keys) != before:
                self.generation += 1

    def remove(self, item_ids: np.ndarray) -> None:
        """Forget evicted items."""
        with self._lock:
            removed = sum(self._keys.pop(i, None) is not None for i in np.asarray(item_ids, np.int64).tolist())
            if removed:
                self.generation += 1

    def caller_ids(self, item_ids: np.ndarray) -> list[str | int]:
        """The caller's id of each index id: its key, or the index id itself."""
        with self._lock:
            return [self._keys.get(i, i) for i in np.asarray(item_ids, np.int64).tolist()]

    def item_ids(self) -> np.ndarray:
        """Index ids that have a key."""
        with self._lock:
            return np.fromiter(self._keys, dtype=np.int64, count=len(self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def to_parquet_bytes(self) -> bytes:
        with self._lock:
            ids, keys = list(self._keys), list(self._keys.values())
        sink = io.BytesIO()
        pq.write_table(pa.table({ID_COLUMN: pa.array(ids, pa.int64()), KEY_COLUMN: pa.array(keys, pa.string())}), sink,
                       compression="zstd")
        return sink.getvalue()

    @classmethod
    def from_parquet_bytes(cls, data: bytes) -> ItemKeys:
        table = pq.read_table(io.BytesIO(data))
        keys = cls()
        keys._keys = dict(zip(table.column(ID_COLUMN).to_pylist(), table.column(KEY_COLUMN).to_pylist()))
        return keys
