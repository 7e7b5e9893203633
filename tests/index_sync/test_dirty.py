"""DirtyItemTracker: first-touch times, atomic drain, restore, no id lost across threads."""

from __future__ import annotations

import threading

import numpy as np

import index_sync.dirty as dirty_module
from index_sync.dirty import DirtyItemTracker


def test_an_item_keeps_its_first_touch_time() -> None:
    tracker = DirtyItemTracker()
    tracker.touch(np.array([3, 1, 3]), now=100.0)
    tracker.touch(np.array([1, 2]), now=105.0)
    assert len(tracker) == 3
    ids, times = tracker.drain()
    assert ids.tolist() == [1, 2, 3]
    assert times.tolist() == [100.0, 105.0, 100.0]


def test_drain_empties_the_set() -> None:
    tracker = DirtyItemTracker()
    tracker.touch(np.array([1, 2]), now=1.0)
    assert len(tracker.drain()[0]) == 2
    assert len(tracker) == 0 and tracker.oldest_age(now=5.0) is None
    ids, times = tracker.drain()
    assert ids.size == 0 and times.size == 0
    tracker.touch(np.array([1]), now=7.0)  # touched again after a drain: a new first touch
    assert tracker.drain()[1].tolist() == [7.0]


def test_oldest_age_is_the_age_of_the_oldest_first_touch() -> None:
    tracker = DirtyItemTracker()
    assert tracker.oldest_age(now=10.0) is None
    tracker.touch(np.array([1]), now=10.0)
    tracker.touch(np.array([1, 2]), now=12.0)
    assert tracker.oldest_age(now=15.5) == 5.5
    wall = DirtyItemTracker()
    wall.touch(np.array([3]))  # default clock: time.time()
    assert 0.0 <= wall.oldest_age() < 5.0


def test_restore_puts_drained_ids_back_with_their_times() -> None:
    tracker = DirtyItemTracker()
    tracker.touch(np.array([1, 2]), now=10.0)
    ids, times = tracker.drain()
    tracker.touch(np.array([2, 3]), now=20.0)  # training goes on while the sync fails
    tracker.restore(ids, times)
    assert tracker.oldest_age(now=30.0) == 20.0
    ids, times = tracker.drain()
    assert dict(zip(ids.tolist(), times.tolist())) == {1: 10.0, 2: 10.0, 3: 20.0}


def test_consolidation_keeps_first_touch_times(monkeypatch) -> None:
    monkeypatch.setattr(dirty_module, "MIN_CONSOLIDATE_ROWS", 4)
    tracker = DirtyItemTracker()
    for t in range(50):
        tracker.touch(np.array([t % 7, 100]), now=float(t))
    ids, times = tracker.drain()
    assert ids.tolist() == [0, 1, 2, 3, 4, 5, 6, 100]
    assert times.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


def test_concurrent_touch_and_drain_lose_no_id(monkeypatch) -> None:
    """Each id is touched once; every id ends up drained exactly once or still pending."""
    monkeypatch.setattr(dirty_module, "MIN_CONSOLIDATE_ROWS", 64)  # consolidate under contention
    tracker = DirtyItemTracker()
    writers, per_writer, batch = 2, 20_000, 50
    drained: list[np.ndarray] = []
    done = threading.Event()

    def write(offset: int) -> None:
        for start in range(0, per_writer, batch):
            tracker.touch(offset + np.arange(start, start + batch), now=float(start))

    def sync() -> None:
        while not done.is_set():
            ids, _ = tracker.drain()
            drained.append(ids)
            if ids.size % 3 == 0:  # now and then a sync "fails" and restores what it drained
                tracker.restore(*(ids, np.zeros(ids.size)))
                drained.pop()

    threads = [threading.Thread(target=write, args=(w * per_writer,)) for w in range(writers)]
    syncer = threading.Thread(target=sync)
    syncer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    done.set()
    syncer.join(timeout=30)
    drained.append(tracker.drain()[0])
    everything = np.concatenate(drained)
    assert everything.size == writers * per_writer  # nothing drained twice...
    assert np.array_equal(np.sort(everything), np.arange(writers * per_writer))  # ...nothing lost
