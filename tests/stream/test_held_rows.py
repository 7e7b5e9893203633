"""Held impression rows: taken in any order across batches, compacted once mostly dead."""

from __future__ import annotations

import pyarrow as pa

from stream.held_rows import COMPACT_FROM_ROWS, HeldRows

SCHEMA = pa.schema([("x", pa.int64())])


def _batch(start: int, n: int) -> pa.Table:
    return pa.table({"x": pa.array(range(start, start + n), pa.int64())})


def test_rows_come_back_in_the_asked_order_across_batches() -> None:
    rows = HeldRows(SCHEMA)
    assert rows.append(_batch(0, 3)) == 0 and rows.append(_batch(3, 4)) == 3 and rows.append(_batch(7, 2)) == 7
    assert rows.take([8, 0, 4, 4, 2]).column("x").to_pylist() == [8, 0, 4, 4, 2]
    assert rows.take([]).num_rows == 0


def test_compaction_keeps_the_live_rows_and_renumbers_them() -> None:
    rows = HeldRows(SCHEMA)
    for start in range(0, 2 * COMPACT_FROM_ROWS, 100):
        rows.append(_batch(start, 100))
    live = list(range(0, 2 * COMPACT_FROM_ROWS, 7))
    assert rows.release(rows.next // 2 - 1, lambda: live) is None  # half still live: no compaction yet
    remap = rows.release(rows.live - len(live), lambda: live)
    assert remap is not None and len(rows.chunks) == 1 and rows.next == len(live)
    assert rows.take([remap[o] for o in live]).column("x").to_pylist() == live
