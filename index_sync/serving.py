"""Scoring and retrieval for readers, from one consistent (index version, model) snapshot.

`score` runs the user side once and applies the model's own scorer to the candidates'
stored vectors: FE-Block sum-of-max for IntTower, the inner product for Two-Tower — the
paper's O(N + kM) serving shape. `retrieve` is multi-vector retrieval as ColBERT does
late interaction, exactly: a blocked sum-of-max scan of a flat index
(`index_sync.retrieval`), or per-head candidates re-scored exactly for other index
kinds. Every result names the index version it read.

Ids are the caller's: `score` takes candidate ids as strings or integers (mapped to index
ids by `stream.ids.to_index_ids`, as the decoders map the stream's ids) and returns them
as asked; `retrieve` answers in the caller's ids through the snapshot's `ItemKeys`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from index_sync.keys import ItemKeys
from index_sync.retrieval import AnnSearch, exact_top_k, per_head_candidates
from index_sync.version import IndexVersion
from model.base import PreRanker
from model.features import FeatureEncoder
from stream.ids import to_index_ids

#: Hits per user head in `retrieve`, as a multiple of k (more = better recall, slower).
HITS_PER_HEAD_FACTOR = 4


@dataclass(frozen=True)
class ServingSnapshot:
    """An index version and the model (eval mode, never trained again) that goes with it."""

    version: IndexVersion
    model: PreRanker
    keys: ItemKeys | None = None  # caller ids behind index ids; None: every id is its own


@dataclass(frozen=True)
class Scores:
    version: int
    item_ids: list  # the caller's ids, as asked
    probabilities: np.ndarray  # NaN where unknown
    known: np.ndarray  # False: the id is not in this version (flagged, not an error)


@dataclass(frozen=True)
class Retrieved:
    version: int
    item_ids: list  # the caller's ids, best first
    probabilities: np.ndarray
    index_ids: np.ndarray  # the same items' index ids


class IndexNotReadyError(RuntimeError):
    """No index version has been published yet."""


class Reader:
    """score / retrieve over whatever ``snapshots`` returns now (in-process or on-disk).

    Thread-safe for CPU indexes: each call takes one snapshot reference and uses only it.
    """

    def __init__(self, encoder: FeatureEncoder, snapshots: Callable[[], ServingSnapshot | None],
                 ann: AnnSearch | None = None) -> None:
        self.encoder = encoder
        self._snapshots = snapshots
        self.ann = ann  # None: retrieve scans exactly

    def prepare(self, snapshot: ServingSnapshot) -> None:
        """Build what retrieval needs for a new snapshot (an ANN index per base) before requests see it."""
        if self.ann is not None:
            self.ann.prepare(snapshot.version)

    def _snapshot(self) -> ServingSnapshot:
        snapshot = self._snapshots()
        if snapshot is None:
            raise IndexNotReadyError("no index version has been published yet")
        return snapshot

    @torch.no_grad()
    def _user(self, model: PreRanker, user_features: pa.Table) -> torch.Tensor:
        return model.encode_user(self.encoder.encode_tower(user_features, "user"))

    @torch.no_grad()
    def score(self, user_features: pa.Table, candidate_ids: Sequence[str | int] | np.ndarray) -> Scores:
        """Click probabilities of one user (a one-row table with its ``user`` struct) for candidates.

        ``candidate_ids``: the caller's item ids (strings or integers), as in the stream.
        """
        snapshot = self._snapshot()
        asked = candidate_ids.tolist() if isinstance(candidate_ids, np.ndarray) else list(candidate_ids)
        user = self._user(snapshot.model, user_features)
        vectors, known = snapshot.version.vectors(to_index_ids(asked) if asked else np.zeros(0, np.int64))
        probabilities = np.full(len(asked), np.nan, dtype=np.float64)
        if known.any():
            logits = snapshot.model.score(user, torch.from_numpy(vectors[known]))
            probabilities[known] = torch.sigmoid(logits).numpy()
        return Scores(snapshot.version.version, asked, probabilities, known)

    @torch.no_grad()
    def retrieve(self, user_features: pa.Table, k: int) -> Retrieved:
        """Top-k items of the whole index for one user by the model's own score.

        A flat index is scanned exactly (`index_sync.retrieval.exact_top_k`) unless an
        ``ann`` search is configured; then, or for an index that is not flat, per-head
        candidates are re-scored exactly. The scale, bias and sigmoid are applied to the k
        found.
        """
        snapshot = self._snapshot()
        version = snapshot.version
        user = self._user(snapshot.model, user_features)  # (1, L, H_u, p)
        queries = np.ascontiguousarray(user.reshape(-1, version.dim).numpy(), dtype=np.float32)
        if version.item_count == 0 or k <= 0:
            return Retrieved(version.version, [], np.zeros(0), np.zeros(0, np.int64))
        if self.ann is not None:
            candidates = self.ann.candidates(version, queries)
        else:
            exact = exact_top_k(version, queries, k)
            candidates = exact.item_ids if exact is not None else per_head_candidates(  # an index with no flat rows
                version, queries, max(k, 1) * HITS_PER_HEAD_FACTOR * version.heads)
        vectors, _ = version.vectors(candidates)
        logits = snapshot.model.score(user, torch.from_numpy(vectors)).numpy()
        order = np.argsort(-logits, kind="stable")[:k]
        best = candidates[order]
        caller_ids = snapshot.keys.caller_ids(best) if snapshot.keys is not None else best.tolist()
        return Retrieved(version.version, caller_ids, 1.0 / (1.0 + np.exp(-logits[order])), best)
