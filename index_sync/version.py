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

#: Largest item id that fits the head-id encoding for H heads: ids are int64.
def max_item_id(heads: int) -> int:
    return (np.iinfo(np.int64).max - heads) // heads


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


@dataclass(frozen=True)
class IndexVersion:
    """A published, read-only index version and where it came from."""

    version: int
    index: faiss.Index  # IDMap2 over p-dim head vectors; never mutated once published
    heads: int
    dim: int
    checkpoint: str | None = None  # the model checkpoint whose item tower encoded it
    created_at: float = field(default_factory=time.time)

    @property
    def item_count(self) -> int:
        return self.index.ntotal // self.heads

    @cached_property
    def item_ids(self) -> np.ndarray:
        """Sorted ids of the items in this version (computed once, on first use)."""
        rows = faiss.vector_to_array(self.index.id_map)
        return np.unique(items_of(rows, self.heads))

    def contains(self, item_ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which items have vectors in this version."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        known = self.item_ids
        if known.size == 0:
            return np.zeros(item_ids.size, dtype=bool)
        pos = np.minimum(np.searchsorted(known, item_ids), known.size - 1)
        return known[pos] == item_ids

    def vectors(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, p) vectors of the known items among ``item_ids`` and the known mask.

        Unknown items get zero vectors and False in the mask (flagged, not an error).
        """
        item_ids = np.asarray(item_ids, dtype=np.int64)
        known = self.contains(item_ids)
        out = np.zeros((item_ids.size, self.heads, self.dim), dtype=np.float32)
        if known.any():
            rows = self.index.reconstruct_batch(head_ids(item_ids[known], self.heads))
            out[known] = rows.reshape(-1, self.heads, self.dim)
        return out, known
