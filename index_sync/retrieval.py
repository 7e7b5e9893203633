"""Top-k retrieval under the model's own multi-vector score: exact scan or per-head candidates.

IntTower scores an item by FE-Block's sum of maxima, S(i) = sum_q max_h <q, v_ih> over
the user's Q = L * H_u query vectors and the item's H head vectors (Two-Tower is the
case Q = H = 1: the inner product). Two ways to its top k:

* ``exact``: one blocked scan of the stored vectors. A flat index keeps every head as a
  row of one contiguous float32 matrix; the scan reads it once in chunks, a (Q, p) x
  (p, chunk * H) product per chunk, max over heads, sum over queries, a running top-k.
  It reads the same bytes as a Two-Tower flat search over (items, H * p) vectors and
  does Q times the arithmetic in matrix-product form, so on a CPU it costs little more
  than Two-Tower's own flat search (`bench.retrieval` measures by how much) — and it is
  the exact top-k, by construction.
* ``per_head``: ColBERT-style candidate generation for indexes that keep no flat matrix
  (IVF, HNSW): every query vector searches every item head for ``hits_per_query`` rows,
  the union of their items is re-scored exactly. Misses items whose score is a sum of
  many moderate maxima, none among any query's best rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from index_sync.flat_rows import FlatRows, flat_rows
from index_sync.version import IndexVersion, items_of

#: Items per chunk of the exact scan: the (Q, chunk * H) similarities stay in cache.
SCAN_CHUNK_ITEMS = 16384


@dataclass(frozen=True)
class TopK:
    item_ids: np.ndarray  # int64, best first
    scores: np.ndarray  # float32: the sum of maxima (before the model's scale and bias)


def exact_scan(rows: FlatRows, queries: torch.Tensor, k: int,
               hidden: np.ndarray | None = None, chunk_items: int = SCAN_CHUNK_ITEMS) -> TopK:
    """The exact top ``k`` of one flat store by sum of maxima; ``hidden``: item ids to skip.

    Per chunk: (chunk * H, p) x (p, Q) into a reused buffer, the max over the H heads of
    each item as elementwise maxima of strided views (faster than a reduction over a
    dimension of 4), the sum over queries into one score vector; one top-k at the end.
    """
    n_items, heads = rows.item_ids.size, rows.heads
    if n_items == 0 or k <= 0:
        return TopK(np.zeros(0, np.int64), np.zeros(0, np.float32))
    q = queries.shape[0]
    transposed = queries.to(torch.float32).T.contiguous()
    chunk = min(chunk_items, n_items)
    sims_buffer, best_buffer = torch.empty(chunk * heads, q), torch.empty(chunk, q)
    scores = torch.empty(n_items)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        m = stop - start
        sims = torch.mm(rows.vectors[start * heads:stop * heads], transposed, out=sims_buffer[:m * heads]).view(m, heads, q)
        best = sims[:, 0] if heads == 1 else torch.maximum(sims[:, 0], sims[:, 1], out=best_buffer[:m])
        for h in range(2, heads):
            torch.maximum(best, sims[:, h], out=best)
        torch.sum(best, dim=1, out=scores[start:stop])
    if hidden is not None and hidden.size:
        scores[torch.from_numpy(rows.positions(hidden))] = -torch.inf
    top = torch.topk(scores, min(k, n_items))
    keep = torch.isfinite(top.values)
    return TopK(rows.item_ids[top.indices[keep].numpy()], top.values[keep].numpy())


def exact_top_k(version: IndexVersion, queries: np.ndarray, k: int) -> TopK | None:
    """Exact top ``k`` of a version (base with its masked items hidden, plus its delta);
    None when a part is not a flat index (use `per_head_candidates`)."""
    parts = [(version.index, version.masked)]
    if version.delta is not None and version.delta.ntotal:
        parts.append((version.delta, None))
    query = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    found = []
    for index, hidden in parts:
        rows = flat_rows(index, version.heads)
        if rows is None:
            return None
        found.append(exact_scan(rows, query, k, hidden))
    ids = np.concatenate([f.item_ids for f in found])
    scores = np.concatenate([f.scores for f in found])
    order = np.argsort(-scores, kind="stable")[:k]
    return TopK(ids[order], scores[order])


def per_head_candidates(version: IndexVersion, queries: np.ndarray, hits_per_query: int) -> np.ndarray:
    """Sorted ids of the items any query vector's ``hits_per_query`` best rows belong to."""
    hits = min(version.item_count * version.heads, hits_per_query)
    if hits <= 0:
        return np.zeros(0, np.int64)
    rows = version.search(np.ascontiguousarray(queries, dtype=np.float32), hits)
    return np.unique(items_of(rows[rows >= 0], version.heads))
