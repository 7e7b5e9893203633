"""Every Prometheus metric inttower exports, in one place.

Names follow the Prometheus conventions: ``inttower_<noun>_<unit>``, base units
(seconds, bytes, ratios in 0..1), counters end in ``_total``, labels of low
cardinality only (partition, reason, model, window — never a user or item id). The
dashboard (`docker/grafana/`) and the alert rules (`docker/prometheus/alerts.yml`) are
written against these names; `tests/integration/test_prometheus.py` checks that every
expression they use returns data from a real Prometheus scraping a real run.

`TrainerMetrics` owns one `CollectorRegistry`, so two daemons in one process (tests)
never collide; `serve` exposes it over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitoring.memory import read_memory

#: Train steps take ~1-50 ms on a CPU at batch 256-2048, less on a GPU.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Event time to the step that used it: sub-second live, up to days in a replay.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400, 604800)
#: Syncs take ~10 ms-1 s; full refreshes seconds to minutes at 1M items.
SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Impression to click: seconds for most clicks, hours for a few (conversions: days).
LABEL_DELAY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


class TrainerMetrics:
    """The daemon's metrics; each attribute is one Prometheus metric."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # -- stream
        self.events_consumed = Counter("inttower_events_consumed_total", "Valid events consumed, by partition.",
                                       ["partition"], registry=r)
        self.events_dead_lettered = Counter("inttower_events_dead_lettered_total",
                                            "Messages or rows rejected and written to the dead-letter topic.",
                                            ["reason"], registry=r)
        self.events_duplicates = Counter("inttower_events_duplicates_total",
                                         "Events whose event_id was seen within the last [feedback] dedup_ids ids "
                                         "(a producer's retry): dropped, never trained.", registry=r)
        self.consumer_lag = Gauge("inttower_consumer_lag_messages", "Highwater minus next offset to train, by partition.",
                                  ["partition"], registry=r)
        # -- training
        self.optimizer_steps = Counter("inttower_optimizer_steps_total", "Optimizer steps applied.", ["model"], registry=r)
        self.skipped_steps = Counter("inttower_optimizer_steps_skipped_total",
                                     "Steps skipped because the loss or gradient was not finite.",
                                     ["model", "reason"], registry=r)
        self.step_duration = Histogram("inttower_train_step_duration_seconds",
                                       "One prequential step (score, then train) of one model.",
                                       ["model"], buckets=STEP_BUCKETS, registry=r)
        self.event_to_update = Histogram("inttower_event_to_update_latency_seconds",
                                         "From an event's time to the optimizer step that used it.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        # -- quality
        self.streaming_auc = Gauge("inttower_streaming_auc", "Exact AUC of the prequential predictions over a window.",
                                   ["model", "window"], registry=r)
        self.streaming_logloss = Gauge("inttower_streaming_logloss", "Log loss of the prequential predictions over a window.",
                                       ["model", "window"], registry=r)
        self.calibration = Gauge("inttower_calibration_ratio", "Mean prediction / observed click rate (long window).",
                                 ["model"], registry=r)
        self.auc_drift = Gauge("inttower_auc_drift", "Streaming AUC, short window minus long window.", ["model"], registry=r)
        self.drift_detections = Counter("inttower_drift_detections_total", "Drift detector alarms.", ["model"], registry=r)
        # -- index
        self.index_version = Gauge("inttower_index_version", "Version number of the published item index.", registry=r)
        self.index_items = Gauge("inttower_index_items", "Items in the published item index.", registry=r)
        self.index_sync_duration = Histogram("inttower_index_sync_duration_seconds",
                                             "From a sync's request to its published swap.", ["kind"],
                                             buckets=SYNC_BUCKETS, registry=r)
        self.index_freshness = Gauge("inttower_index_freshness_seconds",
                                     "Age of the oldest trained item not yet in the published index.", registry=r)
        self.index_last_publish = Gauge("inttower_index_last_publish_timestamp_seconds",
                                        "Unix time of the last published index version.", registry=r)
        self.index_last_sync = Gauge("inttower_index_last_sync_timestamp_seconds",
                                     "Unix time the last index sync job completed (published, or nothing changed).",
                                     registry=r)
        self.index_syncs_skipped = Counter("inttower_index_syncs_skipped_total",
                                           "Index sync jobs that found nothing changed and published no version.",
                                           ["kind"], registry=r)
        self.index_untouched_drift = Gauge("inttower_index_untouched_drift_ratio",
                                           "Mean cosine distance between indexed and current vectors of untouched items.",
                                           registry=r)
        self.index_evicted = Counter("inttower_index_items_evicted_total", "Items evicted from the bounded catalogue.",
                                     registry=r)
        # -- delayed feedback (`[feedback] mode = "joined"`)
        self.feedback_pending = Gauge("inttower_feedback_pending_impressions",
                                      "Impressions waiting for their label window to pass.", registry=r)
        self.feedback_held = Gauge("inttower_feedback_held_impressions",
                                   "Impressions held by the joiner (pending, or kept for late clicks): at most max_pending.",
                                   registry=r)
        self.feedback_watermark_lag = Gauge("inttower_feedback_watermark_lag_seconds",
                                            "Wall-clock time minus the joiner's event-time watermark.", registry=r)
        self.feedback_clicks = Counter("inttower_feedback_clicks_total",
                                       "Clicks by outcome: joined (within the window), late, orphan, duplicate.",
                                       ["outcome"], registry=r)
        self.feedback_impressions = Counter("inttower_feedback_impressions_total",
                                            "Impressions and labelled events by outcome: impression, labelled, duplicate, "
                                            "emitted_early, forgotten, fnw_duplicate.", ["outcome"], registry=r)
        self.feedback_label_delay = Histogram("inttower_feedback_label_delay_seconds",
                                              "Event time from an impression to the click that joined it.",
                                              buckets=LABEL_DELAY_BUCKETS, registry=r)
        # -- checkpoints
        self.checkpoint_duration = Histogram("inttower_checkpoint_duration_seconds", "Writing one checkpoint.",
                                             buckets=CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_last = Gauge("inttower_checkpoint_last_timestamp_seconds", "Unix time of the last checkpoint.",
                                     registry=r)
        # -- process
        r.register(MemoryCollector())

    def serve(self, host: str, port: int) -> int:
        """Expose the metrics on http://host:port/metrics (a daemon thread); returns the port.

        ``port=0`` picks a free one. `close` stops the server.
        """
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None


#: Serving requests: sub-millisecond health checks up to seconds for large candidate sets.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """`inttower serve`'s metrics (its own registry, served on its /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.request_duration = Histogram("inttower_serving_request_duration_seconds",
                                          "From a request's arrival to its response, by endpoint.", ["endpoint"],
                                          buckets=REQUEST_BUCKETS, registry=r)
        self.requests = Counter("inttower_serving_requests_total", "Requests answered, by endpoint and status code.",
                                ["endpoint", "code"], registry=r)
        self.errors = Counter("inttower_serving_errors_total", "Requests refused or failed, by reason.", ["reason"],
                              registry=r)
        self.version = Gauge("inttower_serving_index_version", "Index version being served.", registry=r)
        self.versions_loaded = Counter("inttower_serving_versions_loaded_total",
                                       "Index versions taken into service.", registry=r)
        self.index_age = Gauge("inttower_serving_index_age_seconds", "Seconds since the served version was published.",
                               registry=r)
        r.register(MemoryCollector())


class MemoryCollector(Collector):
    """``inttower_memory_bytes{layer}``, read when scraped (see `monitoring.memory`): which layer grows."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = read_memory()
        family = GaugeMetricFamily("inttower_memory_bytes",
                                   "Process memory by layer: resident set (and its anonymous part), glibc heap in use and free, Arrow's pool, "
                                   "Python's traced bytes (under PYTHONTRACEMALLOC).", labels=["layer"])
        family.add_metric(["rss"], reading.rss_bytes)
        family.add_metric(["rss_anonymous"], reading.anon_bytes)
        if reading.malloc is not None:
            family.add_metric(["malloc_in_use"], reading.malloc.in_use_bytes)
            family.add_metric(["malloc_free"], reading.malloc.free_bytes)
        family.add_metric(["arrow"], reading.arrow_bytes)
        if reading.python_traced_bytes is not None:
            family.add_metric(["python_traced"], reading.python_traced_bytes)
        yield family


def observe_many(histogram, values: np.ndarray) -> None:
    """Observe many values at once: one numpy pass instead of a Python call per value.

    Uses prometheus_client's histogram internals (bucket counters, sum) when they are
    as expected, and falls back to one `observe` per value otherwise.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(float(value))
        return
    # prometheus_client stores per-bucket (non-cumulative) counts: bucket i holds
    # values <= bounds[i] and > bounds[i - 1], the first bound at or above the value.
    counts = np.bincount(np.searchsorted(np.asarray(bounds), values, side="left"), minlength=len(bounds))
    for bucket, count in zip(buckets, counts[: len(buckets)]):
        if count:
            bucket.inc(int(count))
    total.inc(float(values.sum()))
