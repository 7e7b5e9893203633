"""The live item index: readers take the current version; the sync job publishes the next.

Publishing builds the next version off the read path (clone the current index, remove
the ids being replaced or evicted, add the new vectors) and swaps it in with one
reference assignment, which is atomic in CPython: a reader that took the old version
finishes on it, a reader that comes after sees the new one, none sees a half-built one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import faiss
import numpy as np

from index_sync.version import IndexVersion, head_ids, new_flat_index


class LiveIndex:
    """The current `IndexVersion` and the one writer that replaces it.

    Thread-safety: any number of reader threads may call `current` while one sync
    thread publishes; publishing is serialised by a lock. ``on_publish`` callbacks run
    in the publishing thread after the swap (to write the version to disk, export
    metrics).
    """

    def __init__(
        self, heads: int, dim: int, index_factory: Callable[[int], faiss.Index] = new_flat_index, first_version: int = 1
    ) -> None:
        self.heads = heads
        self._first_version = first_version  # > 1 after a restart: versions on disk keep increasing
        self.dim = dim
        self._factory = index_factory
        self._current: IndexVersion | None = None
        self._publish_lock = threading.Lock()
        self.on_publish: list[Callable[[IndexVersion], None]] = []

    @property
    def current(self) -> IndexVersion | None:
        """The newest published version (hold on to it for the duration of one request)."""
        return self._current

    def _next_number(self) -> int:
        return self._first_version if self._current is None else self._current.version + 1

    def publish_update(
        self,
        item_ids: np.ndarray,
        vectors: np.ndarray,
        removed_ids: np.ndarray | None = None,
        checkpoint: str | None = None,
    ) -> IndexVersion:
        """Next version = current with ``item_ids`` (re-)encoded and ``removed_ids`` gone.

        ``vectors`` is (N, H, p) float32 in the order of ``item_ids``. Costs a clone of
        the current index: O(items) time and memory.
        """
        item_ids = np.asarray(item_ids, dtype=np.int64)
        self._check(item_ids, vectors)
        with self._publish_lock:
            base = self._current
            index = faiss.clone_index(base.index) if base is not None else self._factory(self.dim)
            stale = item_ids if removed_ids is None else np.union1d(item_ids, np.asarray(removed_ids, dtype=np.int64))
            if base is not None and stale.size:
                index.remove_ids(head_ids(stale, self.heads))  # add_with_ids does not deduplicate
            if item_ids.size:
                index.add_with_ids(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32), head_ids(item_ids, self.heads))
            return self._swap(index, checkpoint)

    def publish_full(self, item_ids: np.ndarray, vectors: np.ndarray, checkpoint: str | None = None) -> IndexVersion:
        """Next version = exactly these items (a full refresh); nothing is cloned."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        self._check(item_ids, vectors)
        with self._publish_lock:
            index = self._factory(self.dim)
            if item_ids.size:
                index.add_with_ids(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32), head_ids(item_ids, self.heads))
            return self._swap(index, checkpoint)

    def _swap(self, index: faiss.Index, checkpoint: str | None) -> IndexVersion:
        version = IndexVersion(self._next_number(), index, self.heads, self.dim, checkpoint)
        self._current = version  # the one reference swap readers observe
        for callback in self.on_publish:
            callback(version)
        return version

    def _check(self, item_ids: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.shape != (item_ids.size, self.heads, self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({item_ids.size}, {self.heads}, {self.dim})")
        if np.unique(item_ids).size != item_ids.size:
            raise ValueError("item ids in one publication must be unique")
