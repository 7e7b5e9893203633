"""Keeps the item index following the trainer: dirty syncs, full refreshes, drift.

Who does what:
- the training thread calls `observe` after each step (catalogue update, dirty marks) and
  `serve_handoff` between steps: when a sync is due it drains the dirty ids and takes a
  snapshot of the weights (milliseconds) — the only time a sync holds training up;
- the scheduler thread (apscheduler) encodes with that snapshot in eval mode, builds the
  next version off the read path and publishes it, then measures how far untouched
  items have drifted from what the index holds.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from apscheduler.schedulers.background import BackgroundScheduler

from index_sync.catalogue import ItemCatalogue
from index_sync.config import IndexSyncConfig
from index_sync.dirty import DirtyItemTracker
from index_sync.index import LiveIndex
from index_sync.keys import ItemKeys
from index_sync.serving import ServingSnapshot
from index_sync.version import IndexVersion
from model.base import PreRanker
from model.features import FeatureEncoder

log = logging.getLogger(__name__)

#: Checkpoint parts the index sync owns (see `IndexSync.checkpoint_parts`).
CATALOGUE_PART = "catalogue.parquet"
KEYS_PART = "item_keys.parquet"
CHECKPOINT_PARTS = (CATALOGUE_PART, KEYS_PART)


@dataclass(frozen=True)
class SyncReport:
    """What one sync or full refresh did (also what monitoring exports)."""

    version: int
    full: bool
    items_encoded: int
    items_removed: int
    seconds: float  # from the job's request to the published swap (handoff wait included)
    handoff_seconds: float  # time the training thread spent handing over (its only pause)
    oldest_dirty_age_s: float | None  # freshness of what this sync published
    untouched_drift: float | None  # mean cosine distance of sampled untouched items
    published: bool = True  # False: nothing changed since the last version, none published


@dataclass
class _Handoff:
    full: bool
    item_ids: np.ndarray
    first_touched: np.ndarray
    evicted: np.ndarray
    model: PreRanker
    seconds: float
    request: int = 0  # the job request it answers (a late answer to a timed-out job is given back)
    steps: int = 0  # training steps observed when it was taken


def item_vector_shape(model: PreRanker, encoder: FeatureEncoder, sample: pa.Table) -> tuple[int, int]:
    """(H, p) of the model's item vectors, from encoding one catalogue row."""
    with torch.no_grad():
        was = model.training
        model.eval()
        heads, dim = model.encode_items(encoder.encode_tower(sample, "item")).shape[1:]
        model.train(was)
    return int(heads), int(dim)


class IndexSync:
    """Owns the catalogue, the dirty set and the live index of one trainer's model."""

    def __init__(self, config: IndexSyncConfig, model: PreRanker, encoder: FeatureEncoder) -> None:
        self.config = config
        self.model = model
        self.encoder = encoder
        self.catalogue = ItemCatalogue(config.max_items)
        self.keys = ItemKeys()  # caller ids of the catalogue's items where they differ from index ids
        # Held across "catalogue update + keys observe" (trainer) and "contains + keys remove"
        # (publisher), so a publish never drops the key of an item the trainer just re-added.
        self._keys_lock = threading.Lock()
        self.dirty = DirtyItemTracker()
        self.index: LiveIndex | None = None  # created at the first sync, when H and p are known
        self.snapshot: ServingSnapshot | None = None  # what in-process readers use
        self.reports: list[SyncReport] = []
        self.checkpoint_name: str | None = None
        self._evicted: list[np.ndarray] = []
        self._evicted_lock = threading.Lock()  # a failed sync puts its evictions back from another thread
        self._request: queue.Queue[tuple[int, bool]] = queue.Queue()  # (request number, full refresh?)
        self._handoffs: queue.Queue[_Handoff | None] = queue.Queue()  # None: stop waiting (shutdown)
        self._requests_made = 0
        self._stopping = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._job_lock = threading.Lock()
        self._rng = np.random.default_rng(0)
        # An idle trainer changes nothing: a sync with no dirty ids or evictions, and a full
        # refresh with no training step since the last one, publish no version (no disk
        # write, no reader reload); `last_sync_at` still moves, so liveness stays visible.
        self._steps_observed = 0
        self._steps_at_last_full: int | None = None
        self.skipped = {"sync": 0, "full_refresh": 0}  # jobs that found nothing to publish
        self.last_sync_at: float | None = None  # unix time the last job completed (published or not)
        self.first_version = 1  # set past the versions already on disk after a restart
        # Called in the publishing thread with each new ServingSnapshot (disk writers).
        self.on_snapshot: list[Callable[[ServingSnapshot], None]] = []

    def bounded_sizes(self) -> dict[str, int]:
        """Entries of what could grow with time (`TrainingDaemon.bounded_sizes`)."""
        with self._evicted_lock:
            evicted = sum(a.size for a in self._evicted)
        current = self.index.current if self.index is not None else None
        return {
            "catalogue items": len(self.catalogue),
            "catalogue stored rows": self.catalogue.stored_rows,
            "item keys": len(self.keys),
            "dirty touches": self.dirty.pending_rows,
            "evictions pending": evicted,
            "sync reports": len(self.reports),
            "index vectors": (current.index.ntotal + (current.delta.ntotal if current.delta is not None else 0)
                              if current is not None else 0),
        }

    # -- training thread -----------------------------------------------------------------
    def observe(self, table: pa.Table, now: float | None = None) -> None:
        """After a step: remember the items' latest features and mark them dirty."""
        with self._keys_lock:
            result = self.catalogue.update(table.select(["item_id", "item"]))
            self.keys.observe(table)
        if result.evicted.size:
            with self._evicted_lock:
                self._evicted.append(result.evicted)
        self.dirty.touch(np.unique(table.column("item_id").to_numpy()), now)
        self._steps_observed += 1

    def checkpoint_parts(self) -> dict[str, bytes]:
        """The catalogue and the item keys, as named checkpoint parts (keys only where there are any)."""
        parts = {CATALOGUE_PART: self.catalogue.to_parquet_bytes()}
        if len(self.keys):
            parts[KEYS_PART] = self.keys.to_parquet_bytes()
        return parts

    def restore(self, parts: dict[str, bytes]) -> None:
        """Take back what `checkpoint_parts` saved; the first sync then re-publishes every item."""
        if CATALOGUE_PART in parts:
            self.catalogue = ItemCatalogue.from_parquet_bytes(parts[CATALOGUE_PART], self.config.max_items)
            self.dirty.touch(self.catalogue.item_ids())
        if KEYS_PART in parts:
            self.keys = ItemKeys.from_parquet_bytes(parts[KEYS_PART])
            self._forget_keys_outside_catalogue(self.keys.item_ids())  # evicted, not yet published at the checkpoint

    def _forget_keys_outside_catalogue(self, item_ids: np.ndarray) -> None:
        """Drop the keys of ``item_ids`` that the catalogue no longer holds (an item seen again keeps its key)."""
        if item_ids.size:
            with self._keys_lock:
                self.keys.remove(item_ids[~self.catalogue.contains(item_ids)])

    def serve_handoff(self) -> None:
        """Between steps: if the sync job asked, hand over dirty ids and a weight snapshot."""
        while True:
            try:
                request, full = self._request.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            ids, times = self.dirty.drain()
            with self._evicted_lock:
                evicted = np.concatenate(self._evicted) if self._evicted else np.zeros(0, np.int64)
                self._evicted.clear()
            snapshot = copy.deepcopy(self.model).eval()
            for p in snapshot.parameters():
                p.requires_grad_(False)
            self._handoffs.put(_Handoff(full, ids, times, evicted, snapshot, time.perf_counter() - started, request,
                                        self._steps_observed))

    # -- scheduler thread ------------------------------------------------------------------
    def run_job(self, full: bool = False) -> SyncReport | None:
        """Ask the training thread for a handoff, then encode and publish (one job at a time)."""
        with self._job_lock:
            if self._stopping.is_set():
                return None
            requested = time.perf_counter()
            self._requests_made += 1
            request = self._requests_made
            self._request.put((request, full))
            deadline = time.monotonic() + self.config.handoff_timeout_s
            while True:
                try:
                    handoff = self._handoffs.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    log.warning("index sync skipped: the training loop did not hand over within %.0f s",
                                self.config.handoff_timeout_s)
                    return None
                if handoff is None:  # stop() while waiting
                    return None
                if handoff.request == request:
                    break
                self._give_back(handoff)  # the late answer to a job that timed out
            try:
                report = self.publish(handoff, requested)
            except Exception:
                self._give_back(handoff)
                raise
            self.last_sync_at = time.time()
            return report

    def _give_back(self, handoff: _Handoff) -> None:
        """Unpublished work returns for the next sync: dirty ids, and evictions the index has not seen."""
        self.dirty.restore(handoff.item_ids, handoff.first_touched)
        if handoff.evicted.size:
            with self._evicted_lock:
                self._evicted.insert(0, handoff.evicted)

    def publish(self, handoff: _Handoff, requested: float | None = None) -> SyncReport:
        started = time.perf_counter() if requested is None else requested
        model = handoff.model
        if handoff.full:
            item_ids = self.catalogue.item_ids()
        else:
            item_ids = handoff.item_ids[self.catalogue.contains(handoff.item_ids)]  # evicted meanwhile: skip
        if self.index is None:
            sample = self.catalogue.features(item_ids[: self.config.encode_batch])
            if sample.num_rows == 0:  # nothing to encode yet (or all evicted meanwhile): keep the rest for later
                self._give_back(handoff)
                return SyncReport(0, handoff.full, 0, 0, 0.0, handoff.seconds, None, None, published=False)
            heads, dim = item_vector_shape(model, self.encoder, sample.slice(0, 1))
            self.index = LiveIndex(heads, dim, first_version=self.first_version, layout=self.config.layout,
                                   delta_merge_fraction=self.config.delta_merge_fraction)
        if self._unchanged(handoff, item_ids):
            self.skipped["full_refresh" if handoff.full else "sync"] += 1
            assert self.snapshot is not None
            return SyncReport(self.snapshot.version.version, handoff.full, 0, 0, time.perf_counter() - started,
                              handoff.seconds, None, None, published=False)
        drift = self._untouched_drift(model, exclude=item_ids) if not handoff.full else None
        # The trainer may evict items between `contains` above and the feature reads: encode
        # returns the ids it found, and the next handoff's evictions remove the others.
        item_ids, vectors = self.encode(model, item_ids)
        if handoff.full:
            version = self.index.publish_full(item_ids, vectors, checkpoint=self.checkpoint_name)
        else:
            version = self.index.publish_update(item_ids, vectors, handoff.evicted, checkpoint=self.checkpoint_name)
        self.snapshot = ServingSnapshot(version, model, self.keys)
        for callback in self.on_snapshot:
            callback(self.snapshot)
        self._forget_keys_outside_catalogue(handoff.evicted)  # out of the index now, and out of the last snapshot
        if handoff.full:
            self._steps_at_last_full = handoff.steps
        now = time.time()
        age = float(now - handoff.first_touched.min()) if handoff.first_touched.size else None
        report = SyncReport(version.version, handoff.full, int(item_ids.size), int(handoff.evicted.size),
                            time.perf_counter() - started, handoff.seconds, age, drift)
        self.reports.append(report)
        del self.reports[:-100]
        return report

    def _unchanged(self, handoff: _Handoff, item_ids: np.ndarray) -> bool:
        """Would this job publish what readers already have? Ids dirty but evicted meanwhile count as
        nothing: their eviction reaches the index with the next handoff."""
        if self.snapshot is None or handoff.evicted.size:
            return False
        if handoff.full:
            return handoff.item_ids.size == 0 and handoff.steps == self._steps_at_last_full
        return item_ids.size == 0

    @torch.no_grad()
    def encode(self, model: PreRanker, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids still in the catalogue, in order, and their (N, H, p) float32 vectors.

        Ids evicted concurrently by the training thread are left out, never mismatched.
        """
        assert self.index is not None
        ids, vectors = [], []
        step = self.config.encode_batch
        for start in range(0, item_ids.size, step):
            chunk = self.catalogue.features(item_ids[start : start + step])
            ids.append(chunk.column("item_id").to_numpy())
            vectors.append(model.encode_items(self.encoder.encode_tower(chunk, "item")).float().numpy())
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.index.heads, self.index.dim), np.float32)
        return np.concatenate(ids).astype(np.int64, copy=False), np.concatenate(vectors)

    def _untouched_drift(self, model: PreRanker, exclude: np.ndarray) -> float | None:
        """Mean cosine distance between indexed and current vectors of untouched items."""
        current: IndexVersion | None = self.index.current if self.index is not None else None
        if current is None or self.config.drift_sample == 0:
            return None
        candidates = np.setdiff1d(current.item_ids, exclude, assume_unique=False)
        candidates = candidates[self.catalogue.contains(candidates)]
        if candidates.size == 0:
            return None
        sample = self._rng.choice(candidates, size=min(self.config.drift_sample, candidates.size), replace=False)
        sample, fresh = self.encode(model, sample)
        if sample.size == 0:
            return None
        stored, _ = current.vectors(sample)
        cosine = (stored * fresh).sum(-1) / (np.linalg.norm(stored, axis=-1) * np.linalg.norm(fresh, axis=-1) + 1e-12)
        return float(1.0 - cosine.mean())

    # -- scheduling -------------------------------------------------------------------------
    def start(self) -> None:
        """Run syncs every sync_interval_s and full refreshes every full_refresh_interval_s."""
        while not self._handoffs.empty():  # a stale stop marker from an earlier stop()
            self._handoffs.get_nowait()
        self._stopping.clear()
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(self._safe_job, "interval", seconds=self.config.sync_interval_s, args=[False],
                                id="sync", max_instances=1, coalesce=True)
        self._scheduler.add_job(self._safe_job, "interval", seconds=self.config.full_refresh_interval_s, args=[True],
                                id="full-refresh", max_instances=1, coalesce=True)
        self._scheduler.start()

    def _safe_job(self, full: bool) -> None:
        try:
            report = self.run_job(full)
            if report is not None and report.items_encoded:
                log.info("index v%d: %s %d items in %.2f s (handoff %.1f ms)%s", report.version,
                         "full refresh of" if full else "synced", report.items_encoded, report.seconds,
                         report.handoff_seconds * 1e3,
                         f", untouched drift {report.untouched_drift:.4f}" if report.untouched_drift is not None else "")
        except Exception:  # a failed sync must not kill the scheduler; the dirty ids were restored
            log.exception("index sync failed")

    def stop(self) -> None:
        """Stop scheduling; jobs waiting for a handoff (or for the job lock) return at once."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
            self._handoffs.put(None)
