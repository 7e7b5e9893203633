"""ItemCatalogue: latest features win, LRU bound, lookups, checkpoints, threads."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

import index_sync.catalogue as catalogue_module
from index_sync.catalogue import ItemCatalogue
from tests.conftest import SYNTHETIC_EVENT_SCHEMA, make_synthetic_like_table

ITEM_TYPE = SYNTHETIC_EVENT_SCHEMA.struct_type("item")  # the decoder's item struct


def items_table(ids: list[int] | np.ndarray, prices: list[float] | np.ndarray) -> pa.Table:
    """``item_id`` + the decoded ``item`` struct, with ``price`` as the value to check."""
    ids = np.asarray(ids, dtype=np.int64)
    item = pa.StructArray.from_arrays(
        [
            pa.array([str(i) for i in ids.tolist()]),
            pa.array([f"cat{i % 3}" for i in ids.tolist()]),
            pa.array([[f"t{i % 5}"] for i in ids.tolist()], type=pa.list_(pa.string())),
            pa.array(np.asarray(prices, dtype=np.float64)),
        ],
        fields=list(ITEM_TYPE),
    )
    return pa.table({"item_id": pa.array(ids), "item": item})


def prices(cat: ItemCatalogue, ids: list[int]) -> dict[int, float]:
    table = cat.features(np.array(ids))
    return dict(zip(table.column("item_id").to_pylist(), (r["price"] for r in table.column("item").to_pylist())))


def test_latest_features_win_within_and_across_updates() -> None:
    cat = ItemCatalogue(max_items=10)
    result = cat.update(items_table([1, 2, 1, 3, 1], [10.0, 20.0, 11.0, 30.0, 12.0]))
    assert prices(cat, [1, 2, 3]) == {1: 12.0, 2: 20.0, 3: 30.0}  # last row of id 1 wins
    assert result.new_items.tolist() == [1, 2, 3] and result.evicted.size == 0

    result = cat.update(items_table([2, 4, 2], [21.0, 40.0, 22.0]))
    assert prices(cat, [1, 2, 3, 4]) == {1: 12.0, 2: 22.0, 3: 30.0, 4: 40.0}
    assert result.new_items.tolist() == [4]
    assert len(cat) == 4 and cat.features(np.array([1])).schema.field("item").type == ITEM_TYPE


def test_eviction_drops_least_recently_seen_and_reports_it() -> None:
    cat = ItemCatalogue(max_items=3)
    cat.update(items_table([1, 2, 3], [1.0, 2.0, 3.0]))  # recency: 1 < 2 < 3
    cat.update(items_table([1], [1.5]))  # 1 is now the most recent: 2 < 3 < 1
    result = cat.update(items_table([4, 5], [4.0, 5.0]))
    assert result.evicted.tolist() == [2, 3]  # oldest first
    assert result.new_items.tolist() == [4, 5]
    assert cat.item_ids().tolist() == [1, 4, 5]
    assert cat.evicted_total == 2
    assert 2 not in cat and 1 in cat

    # An update alone bigger than the bound keeps its most recent rows.
    result = cat.update(items_table([10, 11, 12, 13, 14], [0.0] * 5))
    assert result.evicted.tolist() == [1, 4, 5, 10, 11]
    assert result.new_items.tolist() == [12, 13, 14]
    assert cat.item_ids().tolist() == [12, 13, 14]
    assert cat.evicted_total == 7


def test_features_follow_the_given_order_and_skip_unknown_ids() -> None:
    cat = ItemCatalogue(max_items=100)
    cat.update(items_table([5, 6, 7], [5.0, 6.0, 7.0]))
    table = cat.features(np.array([7, 99, 5, 7]))
    assert table.column_names == ["item_id", "item"]
    assert table.column("item_id").to_pylist() == [7, 5, 7]
    assert [r["price"] for r in table.column("item").to_pylist()] == [7.0, 5.0, 7.0]
    assert cat.contains(np.array([5, 99, 6])).tolist() == [True, False, True]
    assert cat.features(np.array([99])).num_rows == 0
    assert ItemCatalogue(max_items=1).features(np.array([1])).num_rows == 0  # empty catalogue


def test_sample_draws_distinct_known_ids() -> None:
    cat = ItemCatalogue(max_items=100)
    cat.update(items_table(np.arange(50), np.zeros(50)))
    drawn = cat.sample(20, np.random.default_rng(0))
    assert drawn.size == 20 and np.unique(drawn).size == 20 and cat.contains(drawn).all()
    assert np.sort(cat.sample(500, np.random.default_rng(0))).tolist() == list(range(50))


def test_parquet_round_trip_is_exact() -> None:
    cat = ItemCatalogue(max_items=4)
    cat.update(items_table([1, 2, 3], [1.0, 2.0, 3.0]))
    cat.update(items_table([1, 4, 5], [1.5, 4.0, 5.0]))  # evicts 2
    restored = ItemCatalogue.from_parquet_bytes(cat.to_parquet_bytes(), max_items=4)

    ids = cat.item_ids()
    assert restored.item_ids().tolist() == ids.tolist() == [1, 3, 4, 5]
    assert restored.features(ids).equals(cat.features(ids))
    assert restored.last_seen(ids).tolist() == cat.last_seen(ids).tolist()
    assert (restored.evicted_total, restored.updates_total) == (cat.evicted_total, cat.updates_total)
    # Same future: the same update evicts the same ids in the same order.
    for c in (cat, restored):
        assert c.update(items_table([6, 7], [6.0, 7.0])).evicted.tolist() == [3, 1]  # recency: 3 < 1 < 4 < 5
    assert restored.features(restored.item_ids()).equals(cat.features(cat.item_ids()))

    empty = ItemCatalogue.from_parquet_bytes(ItemCatalogue(max_items=2).to_parquet_bytes(), max_items=2)
    assert len(empty) == 0 and empty.update(items_table([1], [1.0])).new_items.tolist() == [1]


def test_round_trip_into_a_smaller_bound_keeps_the_most_recent() -> None:
    cat = ItemCatalogue(max_items=5)
    cat.update(items_table([1, 2, 3, 4, 5], [0.0] * 5))
    restored = ItemCatalogue.from_parquet_bytes(cat.to_parquet_bytes(), max_items=2)
    assert restored.item_ids().tolist() == [4, 5]
    assert restored.evicted_total == 3


def test_rejects_a_changed_item_struct() -> None:
    cat = ItemCatalogue(max_items=5)
    cat.update(items_table([1], [1.0]))
    other = pa.table({"item_id": pa.array([2], pa.int64()), "item": pa.StructArray.from_arrays([pa.array([1.0])], names=["price"])})
    with pytest.raises(ValueError, match="item struct type changed"):
        cat.update(other)
    with pytest.raises(ValueError, match="int64"):
        cat.update(pa.table({"item_id": pa.array([1], pa.int32()), "item": items_table([1], [1.0]).column("item")}))


def test_a_large_update_and_many_small_ones_stay_bounded() -> None:
    """200k rows in one update, then micro-batches past the bound; rows held stay bounded."""
    base = make_synthetic_like_table(2_048)
    item = pa.concat_arrays([base.column("item").combine_chunks()] * 98)[:200_000]
    rng = np.random.default_rng(0)
    cat = ItemCatalogue(max_items=50_000)
    result = cat.update(pa.table({"item_id": pa.array(rng.integers(0, 80_000, 200_000)), "item": item}))
    assert len(cat) == 50_000 and result.new_items.size + result.evicted.size == np.unique(
        np.concatenate([result.new_items, result.evicted])).size
    for step in range(60):
        ids = rng.integers(0, 120_000, 2_048)
        cat.update(pa.table({"item_id": pa.array(ids), "item": base.column("item")}))
        assert len(cat) == 50_000
        assert cat.stored_rows <= cat.max_items + cat.compaction_slack + 2_048
    assert cat.evicted_total > 0


def test_matches_a_reference_lru_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random updates against a dict model, with tiny thresholds so merges, victim-queue
    refills, slot reuse, compactions and checkpoints all happen many times."""
    monkeypatch.setattr(catalogue_module, "MIN_ID_DELTA", 8)
    monkeypatch.setattr(catalogue_module, "MIN_VICTIM_QUEUE", 4)
    rng = np.random.default_rng(1)
    for _ in range(15):
        max_items = int(rng.integers(1, 60))
        cat = ItemCatalogue(max_items, compaction_slack=int(rng.integers(0, 40)))
        model: dict[int, tuple[int, float]] = {}  # id -> (recency, price)
        clock = 0
        for step in range(40):
            ids = rng.integers(0, 120, int(rng.integers(1, 80)))
            values = rng.random(ids.size)
            last = {int(i): (pos, float(v)) for pos, (i, v) in enumerate(zip(ids, values))}
            before = set(model)
            for item_id, (_, value) in sorted(last.items(), key=lambda kv: kv[1][0]):
                model[item_id] = (clock, value)
                clock += 1
            expected_evicted = sorted(model, key=lambda k: model[k][0])[: max(0, len(model) - max_items)]
            for item_id in expected_evicted:
                del model[item_id]

            result = cat.update(items_table(ids, values))
            assert result.evicted.tolist() == expected_evicted
            assert result.new_items.tolist() == sorted(set(model) - before)
            assert cat.item_ids().tolist() == sorted(model)
            probe = rng.integers(0, 130, 40).tolist()
            assert list(prices(cat, probe).items()) == [(i, model[i][1]) for i in dict.fromkeys(probe) if i in model]
            assert cat.last_seen(np.array(probe)).tolist() == [model[i][0] if i in model else -1 for i in probe]
            if step % 10 == 9:
                cat = ItemCatalogue.from_parquet_bytes(cat.to_parquet_bytes(), max_items, int(rng.integers(0, 40)))


def test_concurrent_updates_and_feature_reads_do_not_raise() -> None:
    cat = ItemCatalogue(max_items=2_000, compaction_slack=500)  # compacts often
    errors: list[BaseException] = []
    stop = threading.Event()

    def train() -> None:
        rng = np.random.default_rng(2)
        try:
            for _ in range(300):
                ids = rng.integers(0, 5_000, 256)
                cat.update(items_table(ids, ids.astype(np.float64)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    def sync() -> None:
        rng = np.random.default_rng(3)
        try:
            while not stop.is_set():
                table = cat.features(rng.integers(0, 5_000, 512))
                got = table.column("item_id").to_numpy()
                # Every row returned is the item's own: price was set to its id.
                assert np.array_equal(np.array([r["price"] for r in table.column("item").to_pylist()]), got)
                cat.sample(100, rng)
                len(cat)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=train), threading.Thread(target=sync)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(cat) == 2_000
