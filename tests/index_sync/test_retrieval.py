"""The blocked sum-of-max scan finds the exact top-k of every layout; other index kinds fall back."""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pytest
import torch

from index_sync.index import LiveIndex
from index_sync.flat_rows import flat_rows
from index_sync.retrieval import AnnSearch, exact_scan, exact_top_k, per_head_candidates
from index_sync.serving import Reader, ServingSnapshot
from index_sync.version import IndexVersion, head_ids
from model.build import build_model
from model.features import FeatureEncoder
from model.inttower import sum_of_max
from tests.conftest import make_synthetic_like_table
from tests.index_sync.test_index import SMALL

HEADS, DIM, QUERIES = 4, 8, 6


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, HEADS, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=2, keepdims=True)


def _brute_force(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """The model's own scorer over every item: the reference the scan must match."""
    user = torch.from_numpy(queries).view(1, 1, QUERIES, DIM)
    scores = sum_of_max(user, torch.from_numpy(vectors)).numpy()
    return ids[np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("chunk_items", [7, 64, 10_000])
def test_the_scan_matches_the_models_scorer_whatever_the_chunk(chunk_items: int) -> None:
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(10, 1010, dtype=np.int64))  # not in id order in the index
    vectors = _vectors(rng, ids.size)
    version = LiveIndex(HEADS, DIM).publish_full(ids, vectors)
    rows = flat_rows(version.index, HEADS)
    assert rows is not None
    for _ in range(5):
        queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
        found = exact_scan(rows, torch.from_numpy(queries), 25, chunk_items=chunk_items)
        np.testing.assert_array_equal(found.item_ids, _brute_force(queries, ids, vectors, 25))
        assert np.all(np.diff(found.scores) <= 0)


def test_base_plus_delta_hides_replaced_and_removed_items_and_finds_the_delta() -> None:
    rng = np.random.default_rng(1)
    live = LiveIndex(HEADS, DIM, layout="delta", delta_merge_fraction=0.9)
    ids = np.arange(1, 501, dtype=np.int64)
    vectors = _vectors(rng, ids.size)
    live.publish_full(ids, vectors)
    changed = np.arange(1, 40, dtype=np.int64)  # re-encoded: the delta holds their new vectors
    removed = np.arange(400, 450, dtype=np.int64)
    new_vectors = _vectors(rng, changed.size)
    version = live.publish_update(changed, new_vectors, removed_ids=removed)
    assert version.delta is not None and version.masked.size  # the layout under test
    current = dict(zip(ids.tolist(), vectors))
    current.update(zip(changed.tolist(), new_vectors))
    for item in removed.tolist():
        del current[item]
    visible = np.array(sorted(current), dtype=np.int64)
    stacked = np.stack([current[i] for i in visible.tolist()])
    for _ in range(5):
        queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
        found = exact_top_k(version, queries, 30)
        np.testing.assert_array_equal(found.item_ids, _brute_force(queries, visible, stacked, 30))


def test_k_beyond_the_catalogue_returns_every_item_once() -> None:
    rng = np.random.default_rng(2)
    ids = np.arange(1, 13, dtype=np.int64)
    version = LiveIndex(HEADS, DIM).publish_full(ids, _vectors(rng, ids.size))
    found = exact_top_k(version, rng.standard_normal((QUERIES, DIM)).astype(np.float32), 100)
    assert sorted(found.item_ids.tolist()) == ids.tolist()


def test_an_index_that_keeps_no_flat_matrix_falls_back_to_per_head_candidates() -> None:
    rng = np.random.default_rng(3)
    ids = np.arange(1, 301, dtype=np.int64)
    vectors = _vectors(rng, ids.size).reshape(-1, DIM)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vectors, head_ids(ids, HEADS))
    version = IndexVersion(1, hnsw, HEADS, DIM, base_items=ids)
    queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    assert exact_top_k(version, queries, 10) is None
    candidates = per_head_candidates(version, queries, 20)
    assert 0 < candidates.size <= QUERIES * 20 and np.isin(candidates, ids).all()


def test_rows_not_grouped_by_item_are_not_scanned() -> None:
    """A flat index whose head rows are interleaved across items cannot be read as (items, H, p)."""
    rng = np.random.default_rng(4)
    ids = np.arange(1, 11, dtype=np.int64)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    index.add_with_ids(_vectors(rng, ids.size).reshape(-1, DIM), head_ids(ids, HEADS)[::-1].copy())
    assert flat_rows(index, HEADS) is None


def test_gathering_in_place_returns_what_the_id_map_returns() -> None:
    """`IndexVersion.vectors` reads a flat index's rows in place; an index without flat rows goes
    through FAISS's id map: the same vectors either way, unknown items zero and flagged."""
    rng = np.random.default_rng(5)
    ids = rng.permutation(np.arange(1, 201, dtype=np.int64))
    vectors = _vectors(rng, ids.size)
    flat = LiveIndex(HEADS, DIM).publish_full(ids, vectors)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vectors.reshape(-1, DIM), head_ids(ids, HEADS))
    by_id_map = IndexVersion(1, hnsw, HEADS, DIM, base_items=np.sort(ids))
    asked = np.array([5, 999, 17, 5, 200], dtype=np.int64)
    got, known = flat.vectors(asked)
    expected, expected_known = by_id_map.vectors(asked)
    np.testing.assert_array_equal(known, [True, False, True, True, True])
    np.testing.assert_array_equal(known, expected_known)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got[0], vectors[np.flatnonzero(ids == 5)[0]])
    assert not got[1].any()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_candidates_beside_a_base_plus_delta_respect_masks_and_find_the_delta(kind: str) -> None:
    rng = np.random.default_rng(6)
    live = LiveIndex(HEADS, DIM, layout="delta", delta_merge_fraction=0.9)
    ids = np.arange(1, 401, dtype=np.int64)
    vectors = _vectors(rng, ids.size)
    first = live.publish_full(ids, vectors)
    changed, removed = np.arange(1, 30, dtype=np.int64), np.arange(300, 340, dtype=np.int64)
    new_vectors = _vectors(rng, changed.size)
    version = live.publish_update(changed, new_vectors, removed_ids=removed)
    # Searching nearly everything: the candidates must then hold the exact top-k.
    ann = AnnSearch(kind, hits_per_query=HEADS * ids.size, nprobe=1_000, ef_search=2_000, hnsw_m=8)
    ann.prepare(first)
    assert ann.ann_index(version) is ann.ann_index(first)  # one ANN index per base
    queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    candidates = ann.candidates(version, queries)
    assert not np.isin(candidates, removed).any()
    exact = exact_top_k(version, queries, 20).item_ids
    assert np.isin(exact, candidates).all()
    assert np.isin(changed, candidates).any()  # delta items are searched


def test_a_reader_with_ann_search_answers_the_exact_top_k_when_it_searches_widely() -> None:
    config = dataclasses.replace(SMALL, kind="inttower")
    model = build_model(config).eval()
    encoder = FeatureEncoder(config.features)
    items = make_synthetic_like_table(300, seed=2)
    ids, first = np.unique(items.column("item_id").to_numpy(), return_index=True)
    with torch.no_grad():
        vectors = model.encode_items(encoder.encode_tower(items.take(first), "item")).numpy()
    version = LiveIndex(vectors.shape[1], vectors.shape[2]).publish_full(ids, vectors)
    snapshot = ServingSnapshot(version, model)
    exact = Reader(encoder, lambda: snapshot)
    ann = Reader(encoder, lambda: snapshot, AnnSearch("hnsw", hits_per_query=vectors.shape[1] * ids.size, ef_search=4_000))
    ann.prepare(snapshot)
    user = make_synthetic_like_table(1, seed=9)
    np.testing.assert_allclose(ann.retrieve(user, 10).probabilities, exact.retrieve(user, 10).probabilities, rtol=1e-6)
