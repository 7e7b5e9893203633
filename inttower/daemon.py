"""The training daemon: Kafka batches -> prequential steps -> checkpoints, for weeks.

Wiring only: consuming and validation are `stream`'s, training is `model`'s. The loop
owns the consumed offsets; they are checkpointed together with the trainer state and
the trained-event record, so a restart resumes at the offset after the last event the
restored model learned from: every event counts exactly once across crashes.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from inttower.config import AppConfig
from index_sync.catalogue import ItemCatalogue
from index_sync.snapshot_files import SnapshotWriter
from index_sync.sync import IndexSync
from inttower.errors import UserError
from inttower.telemetry import Telemetry
from model.audit import TrainedEventLog
from model.build import build_model
from model.checkpoint import CheckpointStore
from model.config import FeatureField
from model.device import resolve_device
from model.features import FeatureEncoder
from model.online import OnlineTrainer, StepResult
from monitoring.streaming import RollingAUC, RollingLogLoss
from stream.consumer import Batch, ClickStreamConsumer
from stream.dead_letter import DeadLetterWriter
from stream.events import EventField, EventSchema

log = logging.getLogger("inttower.daemon")
POLL_TIMEOUT_S = 0.5  # longest the loop waits for a batch before checking stop/timers
TELEMETRY_EVERY_S = 1.0  # lag and index gauges: about one Prometheus scrape interval
CATALOGUE_PART = "catalogue.parquet"


def event_schema(features: tuple[FeatureField, ...]) -> EventSchema:
    """What the decoder must validate: every field of the feature spec, in its struct."""
    return EventSchema(tuple(EventField(f.name, f.kind, "context" if f.source == "context" else f.tower) for f in features))


@dataclass
class ModelSlot:
    """One model trained on the stream, with its streaming quality and history."""

    name: str
    trainer: OnlineTrainer
    auc: RollingAUC
    logloss: RollingLogLoss
    history: list[dict] = field(default_factory=list)

    @property
    def part(self) -> str:
        return f"trainer-{self.name}.pt"


@dataclass
class DaemonSummary:
    events: int
    dead_lettered: dict[str, int]
    seconds: float
    streaming_seconds: float  # from the first batch to the last: throughput without start-up
    checkpoints: int
    models: dict[str, dict[str, float]]


class BatchObserver(Protocol):
    """Something that follows every trained batch (index sync, benchmarks, reports)."""

    def on_batch(self, table: pa.Table, results: dict[str, StepResult]) -> None: ...


class TrainingDaemon:
    """Runs until ``stop`` is set (signals) or a configured stop condition is met."""

    def __init__(
        self, config: AppConfig, stop: threading.Event | None = None, observers: Sequence[BatchObserver] = ()
    ) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.observers = list(observers)
        self.device = resolve_device(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.encoder = FeatureEncoder(config.model.features)
        self.schema = event_schema(config.model.features)
        names = (config.model.kind, *[k for k in config.daemon.shadow_models if k != config.model.kind])
        self.slots = [self._slot(name) for name in names]
        self.store = CheckpointStore(config.daemon.checkpoint_dir, config.daemon.keep_checkpoints)
        self.index_sync = self._index_sync() if config.index.enabled else None
        self.telemetry = Telemetry(config.monitoring, [s.name for s in self.slots]) if config.monitoring.enabled else None
        self.audit = TrainedEventLog(config.daemon.audit_log) if config.daemon.audit_log else None
        self.offsets: dict[int, int] = {}
        self.events = 0
        self.dead_lettered: Counter[str] = Counter()
        self.checkpoints_written = 0
        self._events_at_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_status = time.monotonic()
        self._last_commit = time.monotonic()
        self._last_event = time.monotonic()
        self._events_at_status = 0
        self._next_history = config.daemon.history_every_events
        self._history_ts: list[np.ndarray] = []
        self._first_batch_at: float | None = None
        self._last_telemetry = 0.0
        self._last_batch_at = 0.0
        self._history_time_ms = 0

    def _slot(self, name: str) -> ModelSlot:
        torch.manual_seed(self.config.train.seed)
        model = build_model(replace(self.config.model, kind=name)).to(self.device)
        window = self.config.daemon.metric_window
        return ModelSlot(name, OnlineTrainer(model, self.config.train, self.config.online), RollingAUC(window), RollingLogLoss(window))

    def _index_sync(self) -> IndexSync:
        """The primary model's item index; versions go to disk when index_dir is set."""
        sync = IndexSync(self.config.index, self.slots[0].trainer.model, self.encoder)
        if self.config.index.index_dir:
            writer = SnapshotWriter(Path(self.config.index.index_dir), self.config.index.keep_versions)
            sync.first_version = (writer.last_version or 0) + 1
            sync.on_snapshot.append(writer.write)
        return sync

    # -- checkpoints -------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the newest valid checkpoint, if any; True when one was restored."""
        checkpoint = self.store.latest()
        if checkpoint is None:
            return False
        meta = checkpoint.metadata
        for slot in self.slots:
            if not checkpoint.has(slot.part):
                raise UserError(
                    f"{checkpoint.path}: has no state for model {slot.name!r} (it holds {', '.join(meta['models'])}); "
                    "use another daemon.checkpoint_dir to start fresh"
                )
            state = torch.load(io.BytesIO(checkpoint.read(slot.part)), map_location=self.device, weights_only=True)
            try:
                slot.trainer.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError) as exc:
                first = str(exc).splitlines()[0]
                raise UserError(f"{checkpoint.path}: does not match the model config ({first}); use another daemon.checkpoint_dir") from None
            slot.auc.load_state_dict(meta["metrics"][slot.name]["auc"])
            slot.logloss.load_state_dict(meta["metrics"][slot.name]["logloss"])
        if self.index_sync is not None and checkpoint.has(CATALOGUE_PART):
            catalogue = ItemCatalogue.from_parquet_bytes(checkpoint.read(CATALOGUE_PART), self.config.index.max_items)
            self.index_sync.catalogue = catalogue
            self.index_sync.dirty.touch(catalogue.item_ids())  # the first sync re-publishes every item
        self.offsets = {int(p): int(o) for p, o in meta["offsets"].items()}
        self.events = int(meta["events"])
        self.dead_lettered = Counter(meta["dead_lettered"])
        self._events_at_checkpoint = self._events_at_status = self.events
        if self.audit is not None:
            self.audit.truncate(int(meta["audit_position"]))
        log.info("restored %s: %d events, offsets %s", checkpoint.path.name, self.events, self.offsets)
        return True

    def checkpoint(self) -> None:
        started = time.perf_counter()
        parts = {}
        for slot in self.slots:
            buffer = io.BytesIO()
            torch.save(slot.trainer.state_dict(), buffer)
            parts[slot.part] = buffer.getvalue()
        if self.index_sync is not None:
            parts[CATALOGUE_PART] = self.index_sync.catalogue.to_parquet_bytes()
        if self.audit is not None:
            self.audit.sync()
        metadata = {
            "models": [s.name for s in self.slots],
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "events": self.events,
            "dead_lettered": dict(self.dead_lettered),
            "audit_position": self.audit.position() if self.audit is not None else 0,
            "metrics": {s.name: {"auc": s.auc.state_dict(), "logloss": s.logloss.state_dict()} for s in self.slots},
        }
        written = self.store.save(parts, metadata)
        if self.telemetry is not None:
            self.telemetry.on_checkpoint(time.perf_counter() - started)
        if self.index_sync is not None:
            self.index_sync.checkpoint_name = str(written.path)
        self.checkpoints_written += 1
        self._events_at_checkpoint = self.events
        self._last_checkpoint = time.monotonic()
        log.info("checkpoint %s at %d events (%.2f s)", written.path.name, self.events, time.perf_counter() - started)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> DaemonSummary:
        started = time.monotonic()
        self.restore()
        consumer = ClickStreamConsumer(self.config.stream, self.schema, start_offsets=dict(self.offsets))
        dead_letters = DeadLetterWriter(self.config.stream)
        self._last_event = time.monotonic()
        if self.telemetry is not None:
            self.telemetry.serve()
        if self.index_sync is not None:
            self.index_sync.start()
        try:
            while not self.stop.is_set() and not self._should_stop():
                batch = consumer.next_batch(timeout_s=POLL_TIMEOUT_S)
                if batch is not None:
                    self._process(batch, dead_letters)
                self._timers(consumer)
        finally:
            if self.index_sync is not None:
                self.index_sync.stop()
            self.checkpoint()
            consumer.commit(dict(self.offsets))
            consumer.close()
            dead_letters.close()
            if self.audit is not None:
                self.audit.close()
            if self.telemetry is not None:
                self.telemetry.close()
        return DaemonSummary(
            events=self.events,
            dead_lettered=dict(self.dead_lettered),
            seconds=time.monotonic() - started,
            streaming_seconds=(self._last_batch_at - self._first_batch_at) if self._first_batch_at else 0.0,
            checkpoints=self.checkpoints_written,
            models={s.name: {"auc": s.auc.get(), "logloss": s.logloss.get()} for s in self.slots},
        )

    def _process(self, batch: Batch, dead_letters: DeadLetterWriter) -> None:
        self._first_batch_at = self._first_batch_at or time.monotonic()
        if batch.rejects:
            dead_letters.write(batch.rejects, self.config.stream.topic)
            self.dead_lettered.update(r.reason for r in batch.rejects)
        rows = batch.table.num_rows
        results: dict[str, StepResult] = {}
        if rows:
            features = self.encoder.encode(batch.table)
            for i, slot in enumerate(self.slots):
                result = results[slot.name] = slot.trainer.step(features)
                slot.auc.update(result.labels, result.probabilities)
                slot.logloss.update(result.labels, result.probabilities)
                if i == 0 and result.stepped and self.audit is not None:
                    self.audit.append(batch.table.column("event_id").to_pylist())
            if self.index_sync is not None:
                self.index_sync.observe(batch.table)
            for observer in self.observers:
                observer.on_batch(batch.table, results)
            self._last_event = time.monotonic()
        if self.telemetry is not None:
            self.telemetry.on_batch(batch, results)
        self.offsets.update(batch.next_offsets)
        self.events += rows
        self._last_batch_at = time.monotonic()
        if rows:
            self._history_ts.append(batch.table.column("ts").to_numpy())
        if rows and self.events >= self._next_history:
            # Batches alternate between partitions, each a little ahead or behind in event
            # time: a point sits at the median event time of the events since the last one,
            # kept monotone so the history reads as a time series.
            median = int(np.median(np.concatenate(self._history_ts)))
            self._history_time_ms = max(self._history_time_ms, median)
            self._record_history(self._history_time_ms)
            self._history_ts.clear()
            self._next_history = self.events + self.config.daemon.history_every_events

    def _record_history(self, event_ts_ms: int) -> None:
        for slot in self.slots:
            slot.history.append({"events": self.events, "event_ts_ms": event_ts_ms, "auc": slot.auc.get(), "logloss": slot.logloss.get()})

    def _timers(self, consumer: ClickStreamConsumer) -> None:
        if self.index_sync is not None:
            self.index_sync.serve_handoff()
        now = time.monotonic()
        if self.telemetry is not None and now - self._last_telemetry >= TELEMETRY_EVERY_S:
            # Lag reads the consumer thread's state under its lock: not on every batch.
            self.telemetry.on_lag(consumer.lag())
            if self.index_sync is not None:
                self.telemetry.on_index(self.index_sync)
            self._last_telemetry = now
        daemon = self.config.daemon
        if now - self._last_commit >= daemon.commit_every_s:
            consumer.commit(dict(self.offsets))
            self._last_commit = now
        if self.events > self._events_at_checkpoint and (
            now - self._last_checkpoint >= daemon.checkpoint_every_s
            or self.events - self._events_at_checkpoint >= daemon.checkpoint_every_events
        ):
            self.checkpoint()
        if now - self._last_status >= daemon.status_every_s:
            self._status(consumer, now)

    def _status(self, consumer: ClickStreamConsumer, now: float) -> None:
        rate = (self.events - self._events_at_status) / max(now - self._last_status, 1e-9)
        lag = sum(v for v in consumer.lag().values() if v is not None)
        quality = "  ".join(f"{s.name} auc {s.auc.get():.4f} logloss {s.logloss.get():.4f}" for s in self.slots)
        skipped = sum(sum(s.trainer.skipped.values()) for s in self.slots)
        log.info(
            "events %d (%.0f/s)  lag %d  %s  dead-lettered %d  skipped steps %d  checkpoint %.0f s ago%s",
            self.events, rate, lag, quality, sum(self.dead_lettered.values()), skipped, now - self._last_checkpoint,
            self._index_status(),
        )
        self._last_status, self._events_at_status = now, self.events

    def _index_status(self) -> str:
        snapshot = self.index_sync.snapshot if self.index_sync is not None else None
        if snapshot is None:
            return ""
        age = self.index_sync.dirty.oldest_age()
        return (f"  index v{snapshot.version.version} ({snapshot.version.item_count} items, "
                f"oldest unsynced {0.0 if age is None else age:.1f} s)")

    def _should_stop(self) -> bool:
        daemon = self.config.daemon
        if daemon.stop_after_events is not None and self.events >= daemon.stop_after_events:
            return True
        idle = time.monotonic() - self._last_event
        return daemon.stop_when_idle_s is not None and idle >= daemon.stop_when_idle_s
