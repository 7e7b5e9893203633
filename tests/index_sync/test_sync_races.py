"""Index sync under the trainer's feet: evictions mid-publish, failed publishes, shutdown; and an idle trainer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from index_sync.config import IndexSyncConfig
from index_sync.sync import IndexSync
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.index_sync.sync_jobs import handoff_soon, run_sync_job, small_sync


def _sync(max_items: int = 10_000, **config) -> tuple[IndexSync, object]:
    return small_sync(max_items, **config), generate_synthetic_log(SyntheticLogConfig(events=3000, seed=2))


def test_items_evicted_between_the_membership_check_and_the_feature_read_are_skipped_not_mismatched():
    sync, table = _sync(max_items=400)
    sync.observe(table.slice(0, 1000))
    handoff_soon(sync)
    sync.run_job()
    sync.observe(table.slice(1000, 1400))
    ids = np.unique(table.slice(1000, 1400).column("item_id").to_numpy())
    real_contains = sync.catalogue.contains

    def contains_then_evict(item_ids):  # the trainer's next batch evicts right after the check
        mask = real_contains(item_ids)
        sync.catalogue.update(table.slice(1400, 3000).select(["item_id", "item"]))
        return mask

    sync.catalogue.contains = contains_then_evict
    handoff_soon(sync)
    report = sync.run_job()
    sync.catalogue.contains = real_contains
    kept = ids[real_contains(ids)]
    assert 0 < kept.size < ids.size  # the race did evict some of the handoff's items
    assert report is not None and report.items_encoded == kept.size
    stored, known = sync.index.current.vectors(kept)
    assert known.all()
    _, fresh = sync.encode(sync.model, kept)
    np.testing.assert_allclose(stored, fresh, atol=1e-6)


def test_a_failed_publish_keeps_its_evictions_for_the_next_sync():
    sync, table = _sync(max_items=300)
    sync.observe(table.slice(0, 600))
    handoff_soon(sync)
    sync.run_job(full=True)
    first = set(sync.index.current.item_ids.tolist())
    sync.observe(table.slice(600, 3000))  # evicts many of the indexed items
    real_publish = sync.index.publish_update
    sync.index.publish_update = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    handoff_soon(sync)
    with pytest.raises(RuntimeError, match="disk full"):
        sync.run_job()
    sync.index.publish_update = real_publish
    handoff_soon(sync)
    sync.run_job()
    indexed = set(sync.index.current.item_ids.tolist())
    in_catalogue = set(sync.catalogue.item_ids().tolist())
    assert first - in_catalogue  # something was evicted
    assert indexed <= in_catalogue  # and the retried sync removed every evicted item


def test_stop_wakes_a_job_waiting_for_the_handoff():
    sync, table = _sync(sync_interval_s=0.05)
    sync.observe(table.slice(0, 100))
    sync.start()
    time.sleep(0.3)  # a job is now waiting for serve_handoff, which nobody calls
    started = time.monotonic()
    finished = threading.Event()
    waiter = threading.Thread(target=lambda: (sync._job_lock.acquire(), sync._job_lock.release(), finished.set()))
    sync.stop()
    waiter.start()
    assert finished.wait(5.0), "the waiting sync job did not return after stop()"
    assert time.monotonic() - started < 5.0


def test_a_late_handoff_to_a_timed_out_job_is_given_back_not_taken_by_the_next_job():
    sync, table = _sync()
    sync.config = IndexSyncConfig(enabled=True, handoff_timeout_s=0.2)
    sync.observe(table.slice(0, 300))
    assert sync.run_job() is None  # nobody served the handoff in time
    sync.serve_handoff()  # ... and now the training loop answers the old request
    sync.observe(table.slice(300, 300))  # rows 300-599
    sync.config = IndexSyncConfig(enabled=True, handoff_timeout_s=30.0)
    handoff_soon(sync)
    report = sync.run_job(full=False)
    assert report is not None
    both = np.unique(table.slice(0, 600).column("item_id").to_numpy())
    assert report.items_encoded == both.size  # the late handoff's items were published too
    assert sync._request.empty() and sync._handoffs.empty()  # nothing left behind for the next job


def test_stop_wakes_every_waiting_job():
    sync, table = _sync()
    sync.observe(table.slice(0, 100))
    done = []
    jobs = [threading.Thread(target=lambda: done.append(sync.run_job())) for _ in range(2)]
    for job in jobs:
        job.start()
    time.sleep(0.3)  # one job waits for the handoff, the other for the job lock
    sync._stopping.set()
    sync._handoffs.put(None)  # what stop() does once the scheduler is gone
    for job in jobs:
        job.join(timeout=5.0)
    assert done == [None, None]


def test_an_idle_trainer_publishes_no_version_but_its_syncs_still_complete():
    sync, table = _sync()
    published = []
    sync.on_snapshot.append(published.append)
    sync.observe(table.slice(0, 500))
    first = run_sync_job(sync)
    assert first.published and first.version == 1 and sync.skipped == {"sync": 0, "full_refresh": 0}
    run_sync_job(sync, full=True)  # the first full refresh: the model moved items nobody touched
    before = sync.last_sync_at
    time.sleep(0.01)
    idle = run_sync_job(sync)
    idle_full = run_sync_job(sync, full=True)
    assert not idle.published and not idle_full.published
    assert idle.version == idle_full.version == sync.index.current.version == 2  # readers keep what they have
    assert idle.items_encoded == idle_full.items_encoded == 0
    assert sync.skipped == {"sync": 1, "full_refresh": 1} and len(published) == 2
    assert sync.last_sync_at > before  # liveness moves on: the InttowerIndexStale alert watches it
    assert [r.version for r in sync.reports] == [1, 2]  # skipped jobs are not publish reports

    sync.observe(table.slice(500, 600))
    delta = run_sync_job(sync)
    assert delta.published and delta.version == 3 and delta.items_encoded > 0
    # The delta drained the dirty ids, but a step happened since the last full refresh: untouched items moved.
    full = run_sync_job(sync, full=True)
    assert full.published and full.version == 4 and full.items_encoded == len(sync.catalogue)
    assert not run_sync_job(sync, full=True).published


def test_evictions_alone_are_published():
    sync, table = _sync(max_items=300)
    sync.observe(table.slice(0, 600))
    run_sync_job(sync, full=True)
    indexed = set(sync.index.current.item_ids.tolist())
    sync.observe(table.slice(600, 3000))
    sync.dirty.drain()  # as if a sync had taken the touched ids: only the evictions are left to publish
    report = run_sync_job(sync)
    assert report.published and report.items_encoded == 0 and report.items_removed > 0
    assert not set(sync.index.current.item_ids.tolist()) - set(sync.catalogue.item_ids().tolist())
    assert set(sync.index.current.item_ids.tolist()) < indexed


def test_a_sync_whose_dirty_items_were_all_evicted_publishes_nothing_then_the_eviction():
    sync, table = _sync(max_items=300)
    sync.observe(table.slice(0, 600))
    run_sync_job(sync, full=True)
    sync.observe(table.slice(600, 700))
    touched = np.unique(table.slice(600, 700).column("item_id").to_numpy())
    ids, times = sync.dirty.drain()
    evictions = sync._evicted[:]  # this step's evictions, not yet handed over
    sync._evicted.clear()
    others = table.filter(pc.invert(pc.is_in(table.column("item_id"), pa.array(touched))))
    sync.catalogue.update(others.select(["item_id", "item"]))  # evicts the touched items too...
    sync._evicted.clear()  # ...without their evictions reaching this sync
    assert not sync.catalogue.contains(touched).any()
    sync.dirty.restore(ids, times)
    skipped = run_sync_job(sync)
    assert not skipped.published and sync.skipped["sync"] == 1
    sync._evicted.extend(evictions + [touched])  # the evictions arrive with the next handoff
    removed = run_sync_job(sync)
    assert removed.published and removed.items_removed > 0
    assert not np.isin(touched, sync.index.current.item_ids).any()
