"""A flat index's stored rows, read in place: the exact scan's input and the fastest gather by item.

FAISS's flat storage is one contiguous float32 (rows, p) matrix; the published index
keeps each item's H heads as H consecutive rows (`index_sync.version.head_ids`, added
item by item and removed whole). Viewing that matrix as (items, H, p) without a copy lets
the exact retrieval scan it in blocks (`index_sync.retrieval`) and lets scoring gather N
items with one binary search each, instead of N * H id-map look-ups through
``reconstruct_batch``.
"""

from __future__ import annotations

import weakref
from functools import cached_property

import faiss
import numpy as np
import torch


class FlatRows:
    """A flat index's stored rows as one (rows, p) tensor (zero-copy) and the item of each H-row group."""

    def __init__(self, vectors: torch.Tensor, item_ids: np.ndarray, heads: int) -> None:
        self.vectors = vectors
        self.item_ids = item_ids
        self.heads = heads

    @cached_property
    def _by_id(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.item_ids, kind="stable")
        return self.item_ids[order], order

    def prepare(self) -> None:
        """Sort the items now (O(items) once), so the first `positions` call does not."""
        self._by_id  # noqa: B018 - computes and caches

    def positions(self, item_ids: np.ndarray) -> np.ndarray:
        """Where these items' groups are (items not stored are left out): O(q log n) once sorted."""
        sorted_ids, order = self._by_id
        if sorted_ids.size == 0 or item_ids.size == 0:
            return np.zeros(0, np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, item_ids), sorted_ids.size - 1)
        return order[at[sorted_ids[at] == item_ids]]

    def gather(self, item_ids: np.ndarray) -> np.ndarray | None:
        """(N, H, p) copies of stored items' vectors, in the order asked; None if one is not stored."""
        at = self.positions(item_ids)
        if at.size != item_ids.size:
            return None
        return self.vectors.view(-1, self.heads, self.vectors.shape[1])[torch.from_numpy(at)].numpy()


def flat_rows(index: faiss.Index, heads: int) -> FlatRows | None:
    """Zero-copy view of a flat index's stored rows, grouped item-major; None if it is not flat
    or its rows are not H consecutive heads per item (then only `per_head` can search it).

    Computed once per index object (versions share their base, and a published index is
    never mutated), and forgotten with it.
    """
    cached = _FLAT_ROWS.setdefault(index, {})
    if heads not in cached:
        cached[heads] = _flat_rows(index, heads)
    return cached[heads]


_FLAT_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat_rows(index: faiss.Index, heads: int) -> FlatRows | None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if not isinstance(inner, faiss.IndexFlat) or inner.ntotal % heads:
        return None
    rows, dim = inner.ntotal, inner.d
    vectors = faiss.rev_swig_ptr(inner.get_xb(), rows * dim).reshape(rows, dim) if rows else np.zeros((0, dim), np.float32)
    ids = faiss.vector_to_array(index.id_map) if isinstance(index, faiss.IndexIDMap) else np.arange(rows, dtype=np.int64)
    grouped = ids.reshape(-1, heads)
    items = grouped[:, 0] // heads
    if not np.array_equal(grouped, items[:, None] * heads + np.arange(heads)[None, :]):
        return None
    return FlatRows(torch.from_numpy(vectors), items, heads)
