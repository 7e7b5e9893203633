"""Versions are immutable and swapped whole; readers score and retrieve exactly."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from index_sync.index import LiveIndex
from index_sync.serving import IndexNotReadyError, Reader, ServingSnapshot
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder
from tests.conftest import make_synthetic_like_table

SMALL = ModelConfig(hidden=(16, 16, 8), embedding_dim=4, heads=3, head_dim=4)


def _vectors(n, heads=2, dim=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, heads, dim)).astype(np.float32)


def test_update_replaces_and_removes_while_old_versions_stay_as_they_were():
    live = LiveIndex(heads=2, dim=4)
    first = live.publish_full(np.array([1, 2, 3]), _vectors(3))
    second = live.publish_update(np.array([2, 9]), _vectors(2, seed=1), removed_ids=np.array([3]))
    assert (first.version, second.version) == (1, 2) and live.current is second
    assert sorted(second.item_ids.tolist()) == [1, 2, 9]
    v, known = second.vectors(np.array([2, 3, 9, 1]))
    assert known.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(v[0], _vectors(2, seed=1)[0])
    np.testing.assert_array_equal(v[3], _vectors(3)[0])
    old, old_known = first.vectors(np.array([2, 3]))  # the published first version never changes
    assert old_known.all()
    np.testing.assert_array_equal(old[0], _vectors(3)[1])


def test_publication_rejects_wrong_shapes_and_duplicates():
    live = LiveIndex(heads=2, dim=4)
    with pytest.raises(ValueError, match="shape"):
        live.publish_full(np.array([1]), _vectors(1, heads=3))
    with pytest.raises(ValueError, match="unique"):
        live.publish_full(np.array([1, 1]), _vectors(2))


def _snapshot(kind="inttower"):
    torch.manual_seed(0)
    model = build_model(replace(SMALL, kind=kind)).eval()
    encoder = FeatureEncoder(SMALL.features)
    table = make_synthetic_like_table(200, seed=1)
    ids, first = np.unique(table.column("item_id").to_numpy(), return_index=True)
    items = table.take(first)
    with torch.no_grad():
        vectors = model.encode_items(encoder.encode_tower(items, "item")).numpy()
    live = LiveIndex(heads=vectors.shape[1], dim=vectors.shape[2])
    version = live.publish_full(ids, vectors)
    return ServingSnapshot(version, model), encoder, items, ids


@pytest.mark.parametrize("kind", ["inttower", "two_tower"])
def test_score_equals_the_model_on_the_same_items_and_flags_unknown_ids(kind):
    snapshot, encoder, items, ids = _snapshot(kind)
    reader = Reader(encoder, lambda: snapshot)
    user = make_synthetic_like_table(1, seed=5)
    result = reader.score(user, np.r_[ids[:5], 10_000])
    assert result.version == snapshot.version.version
    assert result.known.tolist() == [True] * 5 + [False]
    assert np.isnan(result.probabilities[-1])
    with torch.no_grad():
        expected = torch.sigmoid(snapshot.model.score(
            snapshot.model.encode_user(encoder.encode_tower(user, "user")),
            snapshot.model.encode_items(encoder.encode_tower(items.slice(0, 5), "item")),
        )).numpy()
    np.testing.assert_allclose(result.probabilities[:5], expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["inttower", "two_tower"])
def test_retrieve_finds_the_exact_top_k_of_a_small_index(kind):
    snapshot, encoder, items, ids = _snapshot(kind)
    reader = Reader(encoder, lambda: snapshot)
    user = make_synthetic_like_table(1, seed=6)
    everything = reader.score(user, ids)
    best = np.sort(everything.probabilities)[::-1][:5]
    result = reader.retrieve(user, 5)
    assert result.version == snapshot.version.version
    assert set(result.item_ids) == set(result.index_ids.tolist()) and len(result.item_ids) == 5
    # The k best scores, whichever of tied items carry them; every item above the k-th is found.
    np.testing.assert_allclose(result.probabilities, best, rtol=1e-6)
    above = ids[everything.probabilities > best[-1] + 1e-7]
    assert set(above.tolist()) <= set(result.item_ids)
    again = reader.score(user, result.item_ids)
    np.testing.assert_allclose(again.probabilities, result.probabilities, rtol=1e-6)


def test_reader_before_any_version_is_a_clear_error():
    with pytest.raises(IndexNotReadyError):
        Reader(FeatureEncoder(SMALL.features), lambda: None).score(make_synthetic_like_table(1), np.array([1]))


@pytest.mark.parametrize("merge_fraction", [0.05, 10.0], ids=["merging", "growing-delta"])
def test_delta_layout_serves_exactly_what_the_clone_layout_serves(merge_fraction):
    rng = np.random.default_rng(3)
    clone = LiveIndex(heads=2, dim=4, layout="clone")
    delta = LiveIndex(heads=2, dim=4, layout="delta", delta_merge_fraction=merge_fraction)
    ids = np.arange(1, 201)
    vectors = _vectors(200, seed=1)
    for live in (clone, delta):
        live.publish_full(ids, vectors)
    for step in range(30):
        touched = np.unique(rng.integers(1, 260, 15))  # some new items, some re-encoded
        removed = np.unique(rng.integers(1, 260, 3))
        removed = np.setdiff1d(removed, touched)
        new_vectors = _vectors(touched.size, seed=100 + step)
        a = clone.publish_update(touched, new_vectors, removed)
        b = delta.publish_update(touched, new_vectors, removed)
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        probe = np.arange(0, 265)
        va, ka = a.vectors(probe)
        vb, kb = b.vectors(probe)
        np.testing.assert_array_equal(ka, kb)
        np.testing.assert_array_equal(va, vb)
        queries = _vectors(3, heads=1, seed=900 + step)[:, 0]
        top_a = a.search(queries, 10)
        top_b = b.search(queries, 10)
        np.testing.assert_array_equal(np.sort(top_a, axis=1), np.sort(top_b, axis=1))
    assert (delta.current.delta is not None) == (merge_fraction > 1)
