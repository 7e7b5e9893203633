"""The live item index: readers take the current version; the sync job publishes the next.

Publishing builds the next version off the read path and swaps it in with one
reference assignment. Two layouts: "clone" copies the whole current index, removes the
ids being replaced or evicted and adds the new vectors (O(catalogue) per sync);
"delta" keeps the last full refresh as a shared base and copies only a small delta of
recent re-encodes, masking their base entries (O(dirty) per sync; see IndexVersion).
A swap is one reference assignment, which is atomic in CPython: a reader that took the old version
finishes on it, a reader that comes after sees the new one, none sees a half-built one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

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
        self,
        heads: int,
        dim: int,
        index_factory: Callable[[int], faiss.Index] = new_flat_index,
        first_version: int = 1,
        layout: Literal["clone", "delta"] = "delta",
        delta_merge_fraction: float = 0.2,
    ) -> None:
        self.heads = heads
        self.layout = layout
        self.delta_merge_fraction = delta_merge_fraction
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
            if self.layout == "delta" and base is not None:
                return self._publish_delta(base, item_ids, vectors, removed_ids, checkpoint)
            index = faiss.clone_index(base.merged_index()) if base is not None else self._factory(self.dim)
            stale = item_ids if removed_ids is None else np.union1d(item_ids, np.asarray(removed_ids, dtype=np.int64))
            if base is not None and stale.size:
                index.remove_ids(head_ids(stale, self.heads))  # add_with_ids does not deduplicate
            if item_ids.size:
                index.add_with_ids(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32), head_ids(item_ids, self.heads))
            return self._swap(index, checkpoint)

    def _publish_delta(
        self, base: IndexVersion, item_ids: np.ndarray, vectors: np.ndarray, removed_ids: np.ndarray | None,
        checkpoint: str | None,
    ) -> IndexVersion:
        """Base + delta: copy only the delta (O(dirty)); the base is shared, its stale items masked."""
        stale = item_ids if removed_ids is None else np.union1d(item_ids, np.asarray(removed_ids, dtype=np.int64))
        delta = faiss.clone_index(base.delta) if base.delta is not None else self._factory(self.dim)
        in_delta = np.intersect1d(stale, base.delta_item_ids)
        if in_delta.size:
            delta.remove_ids(head_ids(in_delta, self.heads))
        if item_ids.size:
            delta.add_with_ids(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32), head_ids(item_ids, self.heads))
        masked = np.union1d(base.masked, np.intersect1d(stale, base.base_item_ids, assume_unique=True))
        delta_items = np.union1d(np.setdiff1d(base.delta_item_ids, stale, assume_unique=True), item_ids)
        extra = {"delta": delta, "masked": masked, "base_items": base.base_item_ids, "delta_items": delta_items}
        if delta.ntotal + masked.size * self.heads > self.delta_merge_fraction * max(base.index.ntotal, 1):
            folded = IndexVersion(0, base.index, self.heads, self.dim, **extra)
            # The delta outgrew its use: fold it into a new base.
            return self._swap(folded.merged_index(), checkpoint, base_items=folded.item_ids)
        return self._swap(base.index, checkpoint, **extra)

    def publish_full(self, item_ids: np.ndarray, vectors: np.ndarray, checkpoint: str | None = None) -> IndexVersion:
        """Next version = exactly these items (a full refresh); nothing is cloned."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        self._check(item_ids, vectors)
        with self._publish_lock:
            index = self._factory(self.dim)
            if item_ids.size:
                index.add_with_ids(np.ascontiguousarray(vectors.reshape(-1, self.dim), dtype=np.float32), head_ids(item_ids, self.heads))
            return self._swap(index, checkpoint, base_items=np.unique(item_ids))

    def _swap(self, index: faiss.Index, checkpoint: str | None, **layout) -> IndexVersion:
        version = IndexVersion(self._next_number(), index, self.heads, self.dim, checkpoint, **layout).warm()
        self._current = version  # the one reference swap readers observe
        for callback in self.on_publish:
            callback(version)
        return version

    def _check(self, item_ids: np.ndarray, vectors: np.ndarray) -> None:
        if vectors.shape != (item_ids.size, self.heads, self.dim):
            raise ValueError(f"vectors have shape {vectors.shape}, expected ({item_ids.size}, {self.heads}, {self.dim})")
        if np.unique(item_ids).size != item_ids.size:
            raise ValueError("item ids in one publication must be unique")
