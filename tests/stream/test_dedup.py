"""The window of recent event ids that drops a producer's retry."""

from __future__ import annotations

import pyarrow as pa

from stream.dedup import RecentIds


def test_fresh_looks_without_remembering_and_catches_repeats_within_a_batch() -> None:
    recent = RecentIds(10)
    keys = RecentIds.keys(pa.array(["a", "b", "a", "c"]))
    assert recent.fresh(keys).tolist() == [True, True, False, True]
    assert recent.fresh(keys).tolist() == [True, True, False, True]  # nothing was recorded
    recent.record(keys)
    assert recent.fresh(RecentIds.keys(["c", "d"])).tolist() == [False, True]


def test_the_window_keeps_the_last_capacity_ids_and_round_trips() -> None:
    recent = RecentIds(3)
    recent.record(RecentIds.keys([f"e{i}" for i in range(5)]))
    assert len(recent) == 3
    assert recent.fresh(RecentIds.keys(["e0", "e1", "e2", "e4"])).tolist() == [True, True, False, False]
    merged = RecentIds.from_states(4, [recent.state_bytes(), RecentIds(2, RecentIds.keys(["x", "y"])).state_bytes()])
    assert merged.fresh(RecentIds.keys(["e2", "e3", "e4", "x", "y"])).tolist() == [True, False, False, False, False]


def test_capacity_zero_drops_nothing() -> None:
    recent = RecentIds(0)
    recent.record(RecentIds.keys(["a"]))
    assert recent.fresh(RecentIds.keys(["a", "a"])).tolist() == [True, True]
