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
    """

    def __init__(self, every_events: int) -> None:
        self.every_events = every_events
        self._next = every_events
        self._pending: list[np.ndarray] = []
        self._time_ms = 0

    def add(self, event_ts_ms: np.ndarray, events: int, slots: Sequence[TracksQuality]) -> None:
        """Note a step's event times; once ``events`` (the total so far) is due, append a point to each slot."""
        self._pending.append(event_ts_ms)
        if events < self._next:
            return
        self._time_ms = max(self._time_ms, int(np.median(np.concatenate(self._pending))))
        for slot in slots:
            slot.history.append({"events": events, "event_ts_ms": self._time_ms, "auc": slot.auc.get(),
                                 "logloss": slot.logloss.get()})
        self._pending.clear()
        self._next = events + self.every_events
