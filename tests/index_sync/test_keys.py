"""Readers answer in the caller's item ids: keys follow the catalogue, checkpoints and on-disk versions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from index_sync.disk import IndexReader
from index_sync.keys import ItemKeys
from index_sync.serving import Reader
from index_sync.snapshot_files import DiskSnapshots, SnapshotWriter, keys_file_name
from index_sync.sync import IndexSync
from model.build import build_model
from model.features import FeatureEncoder
from stream.ids import to_index_ids
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.index_sync.sync_jobs import SMALL, handoff_soon, small_sync


def _with_string_items(table: pa.Table) -> pa.Table:
    """A decoded batch as string item ids give it: index ids in item_id, the caller's ids in item_key."""
    keys = pa.array([f"ASIN-{i:05d}" for i in table.column("item_id").to_pylist()])
    return table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array(to_index_ids(keys))).append_column(
        "item_key", keys
    )


def _sync(max_items: int = 10_000) -> tuple[IndexSync, pa.Table]:
    return small_sync(max_items), _with_string_items(generate_synthetic_log(SyntheticLogConfig(events=2000, seed=2)))


def _publish(sync: IndexSync, full: bool = False) -> None:
    handoff_soon(sync)
    sync.run_job(full=full)


def test_item_keys_observe_remove_and_round_trip() -> None:
    keys = ItemKeys()
    table = pa.table({"item_id": pa.array([5, 9, 7], pa.int64()), "item_key": pa.array(["x", None, "y"])})
    keys.observe(table)
    assert len(keys) == 2 and keys.generation == 1
    keys.observe(table)  # nothing new: the generation stays
    assert keys.generation == 1
    assert keys.caller_ids(np.array([5, 9, 7])) == ["x", 9, "y"]
    copy = ItemKeys.from_parquet_bytes(keys.to_parquet_bytes())
    assert copy.caller_ids(np.array([7, 5])) == ["y", "x"]
    keys.remove(np.array([5]))
    assert keys.caller_ids(np.array([5])) == [5] and keys.generation == 2
    keys.observe(pa.table({"item_id": pa.array([1], pa.int64())}))  # integer-id batches carry no key column
    assert len(keys) == 1


def test_in_process_reader_scores_and_retrieves_in_caller_ids() -> None:
    sync, table = _sync()
    sync.observe(table)
    _publish(sync)
    reader = Reader(sync.encoder, lambda: sync.snapshot)
    user = table.slice(0, 1)
    caller_items = table.column("item_key").unique().to_pylist()
    scores = reader.score(user, caller_items[:5] + ["never-seen"])
    assert scores.item_ids == caller_items[:5] + ["never-seen"]
    assert scores.known.tolist() == [True] * 5 + [False]
    top = reader.retrieve(user, 10)
    assert len(top.item_ids) == 10 and all(isinstance(i, str) and i.startswith("ASIN-") for i in top.item_ids)
    assert to_index_ids(top.item_ids).tolist() == top.index_ids.tolist()
    again = reader.score(user, top.item_ids)  # the retrieved ids score as they were retrieved
    np.testing.assert_allclose(again.probabilities, top.probabilities, rtol=1e-5)


def test_keys_of_evicted_items_go_once_the_index_drops_them() -> None:
    sync, table = _sync(max_items=50)
    sync.observe(table)
    _publish(sync)
    assert len(sync.keys) == len(sync.catalogue) == 50  # the other items' keys went with their eviction


def test_keys_survive_a_checkpoint() -> None:
    sync, table = _sync()
    sync.observe(table)
    parts = sync.checkpoint_parts()
    restored, _ = _sync()
    restored.restore(parts)
    ids = np.unique(table.column("item_id").to_numpy())
    assert restored.keys.caller_ids(ids) == sync.keys.caller_ids(ids)
    assert all(isinstance(k, str) for k in restored.keys.caller_ids(ids))


def test_restore_forgets_keys_of_items_evicted_before_the_checkpoint() -> None:
    sync, table = _sync(max_items=50)
    sync.observe(table)  # evicts all but 50 items; their keys go only at the next publish...
    assert len(sync.keys) > 50
    restored, _ = _sync(max_items=50)
    restored.restore(sync.checkpoint_parts())  # ...which never comes for this checkpoint
    assert len(restored.keys) == len(restored.catalogue) == 50


def test_serving_process_reads_keys_from_disk_and_links_unchanged_ones(tmp_path: Path) -> None:
    sync, table = _sync()
    writer = SnapshotWriter(tmp_path, keep=3)
    sync.on_snapshot.append(writer.write)
    sync.observe(table.slice(0, 1000))
    _publish(sync)
    _publish(sync, full=True)  # no new keys: the second file is a hard link of the first
    first, second = (tmp_path / keys_file_name(v) for v in (1, 2))
    assert first.stat().st_ino == second.stat().st_ino
    sync.observe(table.slice(1000, 2000))  # new items, new keys: a new file
    _publish(sync)
    assert (tmp_path / keys_file_name(3)).stat().st_ino != second.stat().st_ino

    reader = IndexReader(tmp_path)
    reader.maybe_reload()
    serve = Reader(FeatureEncoder(SMALL.features), DiskSnapshots(reader, lambda: build_model(SMALL)))
    top = serve.retrieve(table.slice(0, 1), 5)
    assert top.version == 3
    assert len(top.item_ids) == 5 and all(isinstance(i, str) and i.startswith("ASIN-") for i in top.item_ids)


def test_integer_id_streams_write_no_key_files(tmp_path: Path) -> None:
    sync, _ = _sync()
    writer = SnapshotWriter(tmp_path, keep=3)
    sync.on_snapshot.append(writer.write)
    sync.observe(generate_synthetic_log(SyntheticLogConfig(events=500, seed=3)))
    _publish(sync)
    assert not list(tmp_path.glob("*.keys.parquet"))
