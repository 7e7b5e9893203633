"""Streaming quality against event time, one point every N events, for reports and plots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from monitoring.streaming import RollingAUC, RollingLogLoss


class TracksQuality(Protocol):
    """A model slot (`inttower.daemon.ModelSlot`): its rolling quality and the points it keeps."""

    auc: RollingAUC
    logloss: RollingLogLoss
    history: list[dict]


class QualityClock:
    """Decides when the next history point is due and at which event time it sits.

    Batches alternate between partitions, each a little ahead or behind in event time:
    a point sits at the median event time of the events since the last one, kept
    monotone so the history reads as a time series.

    A daemon runs for weeks, so the history is bounded: once a slot holds ``max_points``
    points, every other point is dropped (the newest kept) and the spacing doubles. The
    history always spans the whole run, at a resolution that halves as the run doubles.
    """

    def __init__(self, every_events: int, max_points: int = 2_000) -> None:
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.every_events = every_events
        self.max_points = max_points
        self._next = every_events
        self._pending: list[np.ndarray] = []
        self._time_ms = 0

    def add(self, event_ts_ms: np.ndarray, events: int, slots: Sequence[TracksQuality]) -> None:
        """Note a step's event times; once ``events`` (the total so far) is due, append a point to each slot."""
        self._pending.append(event_ts_ms)
        if events < self._next:
            return
        times = np.concatenate(self._pending)
        if len(times):  # a step of FNW duplicates alone measures no event
            self._time_ms = max(self._time_ms, int(np.median(times)))
        for slot in slots:
            slot.history.append({"events": events, "event_ts_ms": self._time_ms, "auc": slot.auc.get(),
                                 "logloss": slot.logloss.get()})
        self._pending.clear()
        if len(slots) and len(slots[0].history) >= self.max_points:
            for slot in slots:
                del slot.history[len(slot.history) % 2 :: 2]  # every other point, the newest kept
            self.every_events *= 2
        self._next = events + self.every_events
