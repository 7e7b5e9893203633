"""Clicks read from a topic of their own, held until their impressions' partition has caught up.

With ``[feedback] clicks_topic`` the impressions and the clicks are consumed side by side,
so a click is often read before its impression. The joiner (`stream.joiner`) keeps each
click here, per partition in event-time order, and joins it only once that partition's
impressions have passed the click's time (or gone idle): by then its impression, earlier
on the same partition, has been read. Bounded by the joiner's ``max_pending``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable

import pyarrow as pa

from stream.feedback_wire import click_table

#: One waiting click: (ts, arrival seq, impression event_id, kind, offset); its partition is its queue's.
_Waiting = tuple[int, int, str, "str | None", int]


class WaitingClicks:
    """Per-partition queues of clicks, oldest event time first."""

    def __init__(self) -> None:
        self._queues: dict[int, list[_Waiting]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, partition: int, ts: int, event_id: str, kind: str | None, offset: int) -> None:
        heapq.heappush(self._queues.setdefault(partition, []), (ts, self._seq, event_id, kind, offset))
        self._seq += 1

    def push_table(self, clicks: pa.Table) -> None:
        """Queue a `stream.feedback_wire.CLICK_SCHEMA` table's clicks."""
        columns = [clicks.column(c).to_pylist() for c in ("event_id", "ts", "kind", "partition", "offset")]
        for event_id, ts, kind, partition, offset in zip(*columns):
            self.push(partition, ts, event_id, kind, offset)

    def due(self, passed: Callable[[int], int], idle: Callable[[int], bool], limit: int) -> tuple[pa.Table, int]:
        """The clicks whose partition has ``passed`` their time (or is ``idle``), and beyond ``limit``
        waiting the oldest; as one click table in event-time order, with how many went for the limit."""
        due = []
        for partition, queue in self._queues.items():
            until, quiet = passed(partition), idle(partition)
            while queue and (queue[0][0] < until or quiet):
                due.append((heapq.heappop(queue), partition))
        forced = max(len(self) - limit, 0)
        for _ in range(forced):
            partition = min((q[0][0], p) for p, q in self._queues.items() if q)[1]
            due.append((heapq.heappop(self._queues[partition]), partition))
        due.sort()
        return click_table([(event_id, ts, kind, partition, offset)
                            for (ts, _, event_id, kind, offset), partition in due]), forced

    def state(self) -> list[list]:
        """JSON-ready: [partition, ts, seq, event_id, kind, offset] per click."""
        return [[p, *click] for p, queue in self._queues.items() for click in queue]

    def restore(self, items: Iterable[list], keep: Collection[int] | None) -> None:
        """Add a `state`'s clicks (only those of ``keep``'s partitions, unless None)."""
        for p, ts, _, event_id, kind, offset in items:
            if keep is None or p in keep:
                self.push(p, ts, event_id, kind, offset)
