"""Items touched by training since the last index sync, with when each was first touched.

The age of the oldest pending touch is the index's freshness figure: how long the
oldest model change has not been visible to readers.

`touch` runs in the trainer thread on every micro-batch, so it only appends the ids (one
array copy, O(m)); duplicates are resolved lazily, either when the pending touches
outgrow the distinct set (amortised consolidation) or by the sync job after `drain`,
outside the lock. `drain` swaps the pending list under the lock and nothing more, so a
sync never blocks training longer than a reference swap.

Times are seconds on the caller's clock, expected non-decreasing; the default is
wall-clock `time.time()` (like `Batch.closed_at`), so ages can be computed against
`time.time()` elsewhere. Use one clock for `touch`, `restore` and `oldest_age`.
"First touch" means first in call order: a later `touch` never changes an id's time,
and `restore` puts ids back ahead of anything touched since the drain.

Thread-safety: all methods may be called from any thread (one internal lock).
"""

from __future__ import annotations

import threading
import time

import numpy as np

#: Pending touch rows tolerated beyond twice the distinct ids before consolidating.
MIN_CONSOLIDATE_ROWS = 65_536

_Touches = tuple[np.ndarray, np.ndarray]  # (ids int64, first-touch times float64), call order


class DirtyItemTracker:
    """The set of item ids touched since the last `drain`, with first-touch times."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Touches] = []
        self._rows = 0  # touch rows in _pending, duplicates included
        self._distinct = 0  # distinct ids after the last consolidation (a lower bound)
        self._oldest: float | None = None

    def touch(self, item_ids: np.ndarray, now: float | None = None) -> None:
        """Mark ``item_ids`` dirty at ``now``; ids already dirty keep their first time."""
        ids = np.array(item_ids, dtype=np.int64).reshape(-1)  # a copy: the caller may reuse its buffer
        if ids.size == 0:
            return
        now = time.time() if now is None else float(now)
        times = np.full(ids.size, now, dtype=np.float64)
        with self._lock:
            self._pending.append((ids, times))
            self._rows += ids.size
            self._oldest = now if self._oldest is None else min(self._oldest, now)
            if self._rows > 2 * self._distinct + MIN_CONSOLIDATE_ROWS:
                self._consolidate_locked()

    def restore(self, item_ids: np.ndarray, first_touched: np.ndarray) -> None:
        """Put back ids a failed sync drained, with their original first-touch times.

        They go ahead of touches made since the drain, so their (older) times win.
        """
        ids = np.array(item_ids, dtype=np.int64).reshape(-1)
        times = np.array(first_touched, dtype=np.float64).reshape(-1)
        if ids.size != times.size:
            raise ValueError(f"restore: {ids.size} ids but {times.size} times")
        if ids.size == 0:
            return
        with self._lock:
            self._pending.insert(0, (ids, times))
            self._rows += ids.size
            oldest = float(times.min())
            self._oldest = oldest if self._oldest is None else min(self._oldest, oldest)

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """Take every dirty id and its first-touch time, leaving the tracker empty.

        Returns (ids ascending, times). The caller owns the result; if its sync fails it
        should `restore` them.
        """
        with self._lock:
            pending, self._pending = self._pending, []
            self._rows = self._distinct = 0
            self._oldest = None
        return _first_touches(pending)

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest pending first touch, or None when nothing is dirty."""
        with self._lock:
            oldest = self._oldest
        if oldest is None:
            return None
        now = time.time() if now is None else float(now)
        return max(0.0, now - oldest)

    @property
    def pending_rows(self) -> int:
        """Touch rows held, duplicates included (bounded by consolidation)."""
        return self._rows

    def __len__(self) -> int:
        """Distinct dirty ids (consolidates pending touches: O(n log n))."""
        with self._lock:
            self._consolidate_locked()
            return self._distinct

    def _consolidate_locked(self) -> None:
        if len(self._pending) <= 1 and self._rows == self._distinct:
            return
        ids, times = _first_touches(self._pending)
        self._pending = [(ids, times)] if ids.size else []
        self._rows = self._distinct = ids.size


def _first_touches(pending: list[_Touches]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids (ascending) of ``pending`` with the time of each id's first row."""
    if not pending:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    ids = np.concatenate([p[0] for p in pending])
    times = np.concatenate([p[1] for p in pending])
    uniq, first = np.unique(ids, return_index=True)
    return uniq, times[first]
