"""The quality history stays bounded over a weeks-long run and still spans all of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from inttower.history import QualityClock
from monitoring.streaming import RollingAUC, RollingLogLoss


@dataclass
class _Slot:
    auc: RollingAUC = field(default_factory=lambda: RollingAUC(100))
    logloss: RollingLogLoss = field(default_factory=lambda: RollingLogLoss(100))
    history: list[dict] = field(default_factory=list)


def _run(clock: QualityClock, slots: list[_Slot], batches: int, batch: int = 100) -> None:
    for b in range(1, batches + 1):
        clock.add(np.full(batch, b * 1000, dtype=np.int64), b * batch, slots)


def test_history_is_bounded_and_spans_the_whole_run() -> None:
    slots = [_Slot(), _Slot()]
    clock = QualityClock(every_events=100, max_points=10)
    _run(clock, slots, batches=1_000)  # 100k events: 1,000 points without a bound
    for slot in slots:
        events = [p["events"] for p in slot.history]
        assert 5 <= len(events) <= 10
        assert events == sorted(events) and len(set(events)) == len(events)
        assert events[-1] >= 100_000 - clock.every_events  # reaches the end of the run...
        assert events[0] <= 100_000 // 4  # ...and still covers its first quarter
    assert [p["events"] for p in slots[0].history] == [p["events"] for p in slots[1].history]
    assert clock.every_events > 100  # the spacing grew as points were dropped


def test_history_below_the_bound_keeps_every_point() -> None:
    slots = [_Slot()]
    clock = QualityClock(every_events=100, max_points=1_000)
    _run(clock, slots, batches=50)
    assert [p["events"] for p in slots[0].history] == list(range(100, 5_001, 100))


def test_max_points_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="max_points"):
        QualityClock(every_events=100, max_points=1)


def test_a_step_without_measured_events_keeps_the_last_time() -> None:
    """Joined feedback: a step of FNW duplicates alone has no event the quality counts."""
    slots = [_Slot()]
    clock = QualityClock(every_events=100, max_points=100)
    clock.add(np.full(100, 5_000, dtype=np.int64), 100, slots)
    clock.add(np.zeros(0, dtype=np.int64), 200, slots)
    assert [(p["events"], p["event_ts_ms"]) for p in slots[0].history] == [(100, 5_000), (200, 5_000)]
