"""The rows of the impressions a joiner holds: appended a batch at a time, taken by ordinal, compacted.

Each held impression is addressed by an ordinal (its position in arrival order). Batch
tables are kept as they came, so holding costs no copy; a row let go stays in its batch's
table until most held rows are dead, then the live ones are copied into one table and
renumbered (`release` returns the renumbering). Memory is therefore at most about twice
the live rows, plus one compaction's slack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

#: Below this many rows held, dead rows are not worth a compaction.
COMPACT_FROM_ROWS = 4096


class HeldRows:
    """Rows of one schema, appended in batches and addressed by a running ordinal."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.chunks: list[pa.Table] = []
        self.starts: list[int] = []  # ordinal of each chunk's first row
        self.next = 0
        self.live = 0

    def append(self, table: pa.Table) -> int:
        """Hold ``table``'s rows; the ordinal of its first row."""
        first = self.next
        if table.num_rows:
            self.chunks.append(table)
            self.starts.append(first)
            self.next += table.num_rows
            self.live += table.num_rows
        return first

    def take(self, ordinals: Sequence[int]) -> pa.Table:
        """The rows at ``ordinals``, in that order (one Arrow take per chunk touched)."""
        if not len(ordinals):
            return self.schema.empty_table()
        ordinals = np.asarray(ordinals, dtype=np.int64)
        order = np.argsort(ordinals, kind="stable")
        wanted = ordinals[order]
        chunk_of = np.searchsorted(np.asarray(self.starts), wanted, side="right") - 1
        bounds = [0, *(np.flatnonzero(np.diff(chunk_of)) + 1).tolist(), len(wanted)]
        parts = [self.chunks[chunk_of[s]].take(pa.array(wanted[s:e] - self.starts[chunk_of[s]]))
                 for s, e in zip(bounds, bounds[1:])]
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return table.take(pa.array(np.argsort(order, kind="stable")))  # back to the asked order

    def release(self, count: int, live_ordinals: Callable[[], Iterable[int]]) -> dict[int, int] | None:
        """Note ``count`` rows dead; compact when most held rows are. Old -> new ordinals, if compacted."""
        self.live -= count
        held = self.next - (self.starts[0] if self.starts else 0)
        if held < COMPACT_FROM_ROWS or self.live * 2 > held:
            return None
        ordinals = sorted(live_ordinals())
        table = self.take(ordinals)
        self.chunks, self.starts, self.next, self.live = [], [], 0, 0
        self.append(table)
        return {old: new for new, old in enumerate(ordinals)}
