"""One immutable version of the item index: what readers hold while the next is built.

Item vectors are multi-head, (H, p) per item (IntTower's M_v; H = 1 for Two-Tower).
Every head is stored as its own p-dim row of one `IndexIDMap2` under the id
``item_id * H + head``, so the same index serves both reader paths: gathering an item's
H vectors by id (`reconstruct_batch`) for exact scoring, and per-head inner-product
search for multi-vector retrieval. A version is never mutated after publication.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import faiss
import numpy as np

from index_sync.flat_rows import flat_rows


def head_ids(item_ids: np.ndarray, heads: int) -> np.ndarray:
    """(N,) item ids -> (N * H,) row ids, item-major: item i's heads are rows i*H .. i*H+H-1."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    return (item_ids[:, None] * heads + np.arange(heads, dtype=np.int64)[None, :]).reshape(-1)


def items_of(row_ids: np.ndarray, heads: int) -> np.ndarray:
    """Row ids -> the item ids they belong to."""
    return np.asarray(row_ids, dtype=np.int64) // heads


def new_flat_index(dim: int) -> faiss.IndexIDMap2:
    """An empty exact inner-product index with id mapping (the default layout)."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


_NO_IDS = np.zeros(0, dtype=np.int64)


def _sorted_member(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted haystack, by binary search (any shape of ``ids``)."""
    if sorted_ids.size == 0:
        return np.zeros(np.shape(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return sorted_ids[pos] == ids


def _index_items(index: faiss.Index | None, heads: int) -> np.ndarray:
    if index is None or index.ntotal == 0:
        return _NO_IDS
    return np.unique(items_of(faiss.vector_to_array(index.id_map), heads))


@dataclass(frozen=True)
class IndexVersion:
    """A published, read-only index version and where it came from.

    Two layouts share this type. Clone layout: everything is in ``index``. Base + delta
    layout: ``index`` is the base of the last full refresh (shared, never copied, by
    every version until the next refresh), ``delta`` holds the items re-encoded since,
    and ``masked`` lists the base items hidden because they were re-encoded or removed.
    """

    version: int
    index: faiss.Index  # IDMap2 over p-dim head vectors; never mutated once published
    heads: int
    dim: int
    checkpoint: str | None = None  # the model checkpoint whose item tower encoded it
    created_at: float = field(default_factory=time.time)
    delta: faiss.Index | None = None
    masked: np.ndarray = field(default_factory=lambda: _NO_IDS)  # sorted item ids, all in the base
    # Sorted item ids of base and delta when the publisher knows them (saves an O(items)
    # pass per version); None: read from the index on first use.
    base_items: np.ndarray | None = None
    delta_items: np.ndarray | None = None

    @property
    def item_count(self) -> int:
        return int(self.base_item_ids.size - self.masked.size + self.delta_item_ids.size)

    @cached_property
    def base_item_ids(self) -> np.ndarray:
        return self.base_items if self.base_items is not None else _index_items(self.index, self.heads)

    @cached_property
    def delta_item_ids(self) -> np.ndarray:
        return self.delta_items if self.delta_items is not None else _index_items(self.delta, self.heads)

    @cached_property
    def item_ids(self) -> np.ndarray:
        """Sorted ids of the items in this version (computed once, on first use)."""
        if self.delta is None and self.masked.size == 0:
            return self.base_item_ids
        visible = np.setdiff1d(self.base_item_ids, self.masked, assume_unique=True)
        return np.union1d(visible, self.delta_item_ids)

    def search(self, queries: np.ndarray, hits: int) -> np.ndarray:
        """Row ids (``item_id * H + head``) of the best ``hits`` inner products per query, -1 padded.

        With a delta, the base is over-fetched (by the masked rows, up to ``hits`` more)
        and its masked items dropped, then merged with the delta's hits by score.
        """
        if self.delta is None and self.masked.size == 0:
            return self.index.search(queries, hits)[1]
        extra = min(self.masked.size * self.heads, hits)
        base_scores, base_rows = self.index.search(queries, min(hits + extra, max(self.index.ntotal, 1)))
        hidden = (base_rows < 0) | _sorted_member(self.masked, items_of(base_rows, self.heads))
        base_scores = np.where(hidden, -np.inf, base_scores)
        if self.delta is not None and self.delta.ntotal:
            delta_scores, delta_rows = self.delta.search(queries, min(hits, self.delta.ntotal))
            delta_scores = np.where(delta_rows < 0, -np.inf, delta_scores)
            base_scores = np.concatenate([base_scores, delta_scores], axis=1)
            base_rows = np.concatenate([base_rows, delta_rows], axis=1)
        order = np.argsort(-base_scores, axis=1, kind="stable")[:, :hits]
        rows = np.take_along_axis(base_rows, order, axis=1)
        return np.where(np.take_along_axis(base_scores, order, axis=1) == -np.inf, -1, rows)

    def merged_index(self) -> faiss.Index:
        """One index holding exactly this version's vectors (for writing to disk): O(items)."""
        if self.delta is None and self.masked.size == 0:
            return self.index
        merged = faiss.clone_index(self.index)
        if self.masked.size:
            merged.remove_ids(head_ids(self.masked, self.heads))
        if self.delta is not None and self.delta.ntotal:
            ids = head_ids(self.delta_item_ids, self.heads)
            merged.add_with_ids(self.delta.reconstruct_batch(ids), ids)
        return merged

    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which items have vectors in this version (O(q log n), no copy)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        in_base = _sorted_member(self.base_item_ids, item_ids) & ~_sorted_member(self.masked, item_ids)
        return in_base | _sorted_member(self.delta_item_ids, item_ids)

    def vectors(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, p) vectors of the known items among ``item_ids`` and the known mask.

        Unknown items get zero vectors and False in the mask (flagged, not an error).
        """
        item_ids = np.asarray(item_ids, dtype=np.int64)
        known = self.contains(item_ids)
        out = np.zeros((item_ids.size, self.heads, self.dim), dtype=np.float32)
        in_delta = np.zeros(item_ids.size, dtype=bool)
        if self.delta is not None and self.delta.ntotal:
            in_delta = known & _sorted_member(self.delta_item_ids, item_ids)
            if in_delta.any():
                out[in_delta] = self._gather(self.delta, item_ids[in_delta])
        from_base = known & ~in_delta
        if from_base.any():
            out[from_base] = self._gather(self.index, item_ids[from_base])
        return out, known

    def warm(self) -> IndexVersion:
        """Index the stored rows by item now (an O(items) pass over a new base), in the publisher,
        so that no reader's request pays for it; itself, for chaining."""
        for index in (self.index, self.delta):
            rows = flat_rows(index, self.heads) if index is not None else None
            if rows is not None:
                rows.prepare()
        return self

    def _gather(self, index: faiss.Index, item_ids: np.ndarray) -> np.ndarray:
        """Stored items' (N, H, p) vectors: in place from a flat index, else through the id map."""
        rows = flat_rows(index, self.heads)
        gathered = rows.gather(item_ids) if rows is not None else None
        if gathered is None:
            gathered = index.reconstruct_batch(head_ids(item_ids, self.heads)).reshape(-1, self.heads, self.dim)
        return gathered
