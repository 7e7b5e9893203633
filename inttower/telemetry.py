"""What the daemon reports to Prometheus: the wiring between its loop and `monitoring`.

Quality gauges (streaming AUC, logloss, calibration, AUC drift) are computed when
Prometheus scrapes, from ring buffers the loop fills per batch: the exact AUC over a
window costs a sort, which a scrape every few seconds can afford and a step cannot.

In multi-worker training every rank serves its own endpoint, on ``[monitoring] port +
rank`` (each a free port when the port is 0), and every series there carries a ``rank``
label: rank 0 exports everything (the job's quality and steps, the index, checkpoints,
and its own stream), the other ranks their own stream only (events consumed, dead
letters, consumer lag, by partition) and their own memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from index_sync.sync import IndexSync, SyncReport
from inttower.errors import UserError
from model.online import SKIP_NON_FINITE_GRADIENT, SKIP_NON_FINITE_LOSS, StepResult
from monitoring.config import MonitoringConfig
from monitoring.drift import LoglossDriftDetector
from monitoring.metrics import TrainerMetrics, observe_many
from monitoring.streaming import RollingAUC, RollingCalibration, RollingLogLoss
from stream.codec import REJECT_REASONS, Reject
from stream.consumer import Batch
from stream.joiner import CLICK_REJECT_REASONS, FeedbackJoiner, Joined

log = logging.getLogger("inttower.telemetry")
MS = 1000.0
#: What ranks other than 0 export: their own throughput, lag and memory (metric family names).
RANK_STREAM_METRICS = frozenset({"inttower_events_consumed", "inttower_events_dead_lettered", "inttower_consumer_lag_messages",
                                 "inttower_memory_bytes"})


@dataclass
class ModelQuality:
    """Rolling windows and the drift detector of one model."""

    auc: dict[int, RollingAUC]
    logloss: dict[int, RollingLogLoss]
    calibration: RollingCalibration
    drift: LoglossDriftDetector | None
    detections: int = 0

    def update(self, result: StepResult) -> int:
        for window in (*self.auc.values(), *self.logloss.values(), self.calibration):
            window.update(result.labels, result.probabilities)
        found = self.drift.update(result.labels, result.probabilities) if self.drift is not None else 0
        self.detections += found
        return found


class RankLabelled(Collector):
    """Another registry's samples with a ``rank`` label added; ranks > 0 keep the stream metrics only."""

    def __init__(self, registry: CollectorRegistry, rank: int) -> None:
        self.registry, self.rank = registry, rank

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if self.rank != 0 and family.name not in RANK_STREAM_METRICS:
                continue
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                labelled.add_sample(sample.name, {**sample.labels, "rank": str(self.rank)}, sample.value,
                                    sample.timestamp, sample.exemplar)
            yield labelled


class Telemetry:
    """Owns the metrics of one daemon; every method is called from the training loop.

    ``rank``: this process's rank in a multi-worker job (None: a single process, no
    ``rank`` label); see the module docstring.
    """

    def __init__(self, config: MonitoringConfig, models: list[str], rank: int | None = None) -> None:
        self.config = config
        self.rank = rank
        self.metrics = TrainerMetrics()
        windows = sorted(config.auc_windows)
        self.quality: dict[str, ModelQuality] = {}
        for name in models:
            drift = None
            if config.drift_detector == "page_hinkley":
                drift = LoglossDriftDetector(config.drift_block_events, config.drift_threshold, config.drift_delta,
                                             config.drift_min_blocks)
            q = self.quality[name] = ModelQuality({w: RollingAUC(w) for w in windows}, {w: RollingLogLoss(w) for w in windows},
                                                  RollingCalibration(windows[-1]), drift)
            m = self.metrics
            for w in windows:
                m.streaming_auc.labels(name, str(w)).set_function(q.auc[w].get)
                m.streaming_logloss.labels(name, str(w)).set_function(q.logloss[w].get)
            m.calibration.labels(name).set_function(q.calibration.get)
            short, long = q.auc[windows[0]], q.auc[windows[-1]]
            m.auc_drift.labels(name).set_function(lambda s=short, l=long: s.get() - l.get())
            # Series exist from the start, so rates and increase() see the first event.
            m.optimizer_steps.labels(name)
            m.drift_detections.labels(name)
            for reason in (SKIP_NON_FINITE_LOSS, SKIP_NON_FINITE_GRADIENT):
                m.skipped_steps.labels(name, reason)
            m.step_duration.labels(name)
        for reason in (*REJECT_REASONS, *CLICK_REJECT_REASONS):
            self.metrics.events_dead_lettered.labels(reason)
        for outcome in ("joined", "late", "orphan", "duplicate"):
            self.metrics.feedback_clicks.labels(outcome)
        for kind in ("sync", "full_refresh"):
            self.metrics.index_sync_duration.labels(kind)
            self.metrics.index_syncs_skipped.labels(kind)
        self._last_version_seen = 0
        self._totals_seen: dict[tuple[str, str], float] = {}  # (counter, label) -> the source's total last exported
        self.port: int | None = None
        self._server = None

    def serve(self) -> int:
        """Start the metrics endpoint; a port already in use is a `UserError` naming the setting."""
        try:
            return self._serve()
        except OSError as exc:
            port = self.config.port + (self.rank or 0) if self.config.port else 0
            raise UserError(
                f"cannot serve metrics on {self.config.host}:{port} ({exc.strerror or exc}); "
                "set [monitoring] port to a free port, or 0 for any free one"
            ) from None

    def _serve(self) -> int:
        if self.rank is None:
            self.port = self.metrics.serve(self.config.host, self.config.port)
            log.info("metrics on http://%s:%d/metrics", self.config.host, self.port)
            return self.port
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RankLabelled(self.metrics.registry, self.rank))
        port = self.config.port + self.rank if self.config.port else 0
        self._server, _ = start_http_server(port, addr=self.config.host, registry=registry)
        self.port = self._server.server_port
        log.info("metrics of rank %d on http://%s:%d/metrics", self.rank, self.config.host, self.port)
        return self.port

    def close(self) -> None:
        self.metrics.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on_batch(self, batch: Batch, results: dict[str, StepResult], now: float | None = None) -> None:
        """One process: a batch consumed and stepped on."""
        self.on_consumed(batch)
        if batch.table.num_rows:
            self.on_step(results, batch.table.column("ts").to_numpy(), now)

    def on_consumed(self, batch: Batch) -> None:
        """This rank's stream: valid events by partition, dead letters."""
        m = self.metrics
        for partition, count in batch.events_by_partition.items():
            m.events_consumed.labels(str(partition)).inc(count)
        self.on_rejects(batch.rejects)

    def on_rejects(self, rejects: list[Reject]) -> None:
        for reject in rejects:
            self.metrics.events_dead_lettered.labels(reject.reason).inc()

    def on_join(self, joined: Joined, joiner: FeedbackJoiner) -> None:
        """Joined feedback: what one batch's join did, and the join state's size and watermark."""
        m = self.metrics
        counts = joined.counts
        for outcome, key in (("joined", "joined_clicks"), ("late", "late_clicks"), ("orphan", "orphan_clicks"),
                             ("duplicate", "duplicate_clicks")):
            if counts[key]:
                m.feedback_clicks.labels(outcome).inc(counts[key])
        for outcome, key in (("impression", "impressions"), ("labelled", "labelled"),
                             ("duplicate", "duplicate_impressions"), ("duplicate", "duplicate_events"),
                             ("emitted_early", "emitted_early"), ("forgotten", "forgotten"),
                             ("fnw_duplicate", "fnw_duplicates")):
            if counts[key]:
                m.feedback_impressions.labels(outcome).inc(counts[key])
        duplicates = counts["duplicate_impressions"] + counts["duplicate_events"]
        if duplicates:
            m.events_duplicates.inc(duplicates)
        for delay in joined.label_delays_s:
            m.feedback_label_delay.observe(delay)
        m.feedback_pending.set(joiner.pending)
        m.feedback_held.set(len(joiner.entries))
        watermark = joiner.watermark()
        if watermark is not None:
            m.feedback_watermark_lag.set(max(time.time() - watermark / 1000.0, 0.0))

    def on_step(self, results: dict[str, StepResult], event_ts_ms: np.ndarray, now: float | None = None) -> None:
        """The job's step: every model's result over the events of every rank (``event_ts_ms``: theirs)."""
        m = self.metrics
        for name, result in results.items():
            if result.stepped:
                m.optimizer_steps.labels(name).inc()
            else:
                m.skipped_steps.labels(name, result.skipped_reason).inc()
            m.step_duration.labels(name).observe(result.seconds)
            if self.quality[name].update(result):
                m.drift_detections.labels(name).inc()
                log.warning("drift detected for %s: prequential logloss rose (block %d)", name,
                            self.quality[name].drift.blocks)
        if len(event_ts_ms) and any(r.stepped for r in results.values()):
            now = time.time() if now is None else now
            observe_many(m.event_to_update, np.maximum(now - event_ts_ms / MS, 0.0))

    def on_lag(self, lag: dict[int, int]) -> None:
        for partition, value in lag.items():
            self.metrics.consumer_lag.labels(str(partition)).set(value)

    def on_checkpoint(self, seconds: float) -> None:
        self.metrics.checkpoint_duration.observe(seconds)
        self.metrics.checkpoint_last.set(time.time())

    def on_index(self, sync: IndexSync) -> None:
        m = self.metrics
        for report in sync.reports:
            if report.version > self._last_version_seen:
                self._index_report(report)
                self._last_version_seen = report.version
        age = sync.dirty.oldest_age()
        m.index_freshness.set(0.0 if age is None else age)
        if sync.last_sync_at is not None:
            m.index_last_sync.set(sync.last_sync_at)
        for kind, skipped in sync.skipped.items():
            self._count_to(m.index_syncs_skipped.labels(kind), ("index_syncs_skipped", kind), skipped)
        self._count_to(m.index_evicted, ("index_evicted", ""), sync.catalogue.evicted_total)
        if sync.snapshot is not None:
            m.index_version.set(sync.snapshot.version.version)
            m.index_items.set(sync.snapshot.version.item_count)

    def _count_to(self, counter: Counter, key: tuple[str, str], total: float) -> None:
        """Advance ``counter`` to a source's running ``total`` (it only ever grows), by what is new since the last call."""
        seen = self._totals_seen.get(key, 0)
        if total > seen:
            counter.inc(total - seen)
            self._totals_seen[key] = total

    def _index_report(self, report: SyncReport) -> None:
        m = self.metrics
        m.index_sync_duration.labels("full_refresh" if report.full else "sync").observe(report.seconds)
        m.index_last_publish.set(time.time())
        if report.untouched_drift is not None:
            m.index_untouched_drift.set(report.untouched_drift)
