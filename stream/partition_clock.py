"""Per-partition event time of one topic: the input of the joiner's watermark.

The watermark is the smallest, over partitions not idle, of the largest event time seen
on each; a partition whose time has not moved for ``idle_partition_s`` (wall time) stops
holding it back.
"""

from __future__ import annotations

#: Event time of a partition with nothing seen yet (below any real time).
NO_TS = -(2**63)


class PartitionClock:
    """The latest event time seen on each partition of one topic, and when (wall time) it last moved."""

    def __init__(self) -> None:
        self.ts: dict[int, int] = {}
        self.seen: dict[int, float] = {}

    def observe(self, max_ts: dict[int, int], now: float) -> None:
        for partition, ts in max_ts.items():
            if ts > self.ts.get(partition, NO_TS):
                self.ts[partition] = ts
            self.seen[partition] = now

    def idle(self, partition: int, now: float, idle_s: float) -> bool:
        return now - self.seen.get(partition, now) >= idle_s

    def active(self, now: float, idle_s: float) -> list[int]:
        return [ts for p, ts in self.ts.items() if not self.idle(p, now, idle_s)]
