"""The training daemon: Kafka batches -> prequential steps -> checkpoints, for weeks.

Wiring only: consuming and validation are `stream`'s, training is `model`'s. The loop
owns the consumed offsets; they are checkpointed together with the trainer state and
the trained-event record, so a restart resumes at the offset after the last event the
restored model learned from: every event counts exactly once across crashes.

Under torchrun the daemon is one rank of a data-parallel job; its `Coordinator`
(`inttower.distributed`) keeps the ranks in lockstep. Rank 0 writes the one checkpoint
(every rank's offsets), the audit record and the index, and holds the job's streaming
metrics; every rank reads its own fixed share of the partitions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import torch

from index_sync.snapshot_files import SnapshotWriter
from index_sync.sync import CHECKPOINT_PARTS as INDEX_CHECKPOINT_PARTS, IndexSync
from inttower.config import AppConfig, malloc_mmap_threshold
from inttower.distributed import (
    Agreement,
    Coordinator,
    LocalCoordinator,
    ParameterDigestLog,
    StepRecord,
    StepShare,
    Vote,
    merge_offsets,
    partition_share,
    stand_in_batch,
    step_slices,
)
from inttower.errors import UserError
from inttower.feedback import JoinedFeedback
from inttower.history import QualityClock
from inttower.telemetry import Telemetry
from model.audit import TrainedEventLog
from model.build import build_model
from model.checkpoint import CheckpointStore
from model.warm_start import WarmStartError, config_dict, load_trainer, read_state, serialize_state, trainer_part, warm_start
from model.config import CS3Config
from model.device import resolve_device
from model.features import FeatureEncoder, event_schema
from model.online import OnlineTrainer, StepResult
from monitoring.memory import PeriodicTrim, TracedGrowth, read_memory, tune_malloc, write_malloc_info
from monitoring.streaming import RollingAUC, RollingLogLoss
from stream.consumer import Batch, ClickStreamConsumer
from stream.dead_letter import DeadLetterWriter
from stream.dedup import RecentIds
from stream.topics import TopicNotFoundError

log = logging.getLogger("inttower.daemon")
POLL_TIMEOUT_S = 0.5  # longest the loop waits for a batch before checking stop/timers
BUSY_POLL_S = 0.02  # multi-worker, while the job has events: a rank without a batch must not hold the others
TELEMETRY_EVERY_S = 1.0  # lag and index gauges: about one Prometheus scrape interval
DEDUP_PART = "dedup-{rank}"  # labelled events: each rank's window of recent event ids


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
        return trainer_part(self.name)


@dataclass
class DaemonSummary:
    events: int
    dead_lettered: dict[str, int]
    seconds: float
    streaming_seconds: float  # from the first batch to the last: throughput without start-up
    checkpoints: int
    models: dict[str, dict[str, float]]


class BatchObserver(Protocol):
    """Something that follows every trained batch (index sync, benchmarks, reports).

    In multi-worker training each rank's observers see that rank's batches.
    """

    def on_batch(self, table: pa.Table, results: dict[str, StepResult]) -> None: ...


class TrainingDaemon:
    """Runs until ``stop`` is set (signals) or a configured stop condition is met.

    ``coordinator``: the other ranks of a multi-worker job; by default none (one process).
    """

    def __init__(
        self, config: AppConfig, stop: threading.Event | None = None, observers: Sequence[BatchObserver] = (),
        coordinator: Coordinator | None = None,
    ) -> None:
        self.config = config
        tune_malloc(config.daemon.malloc_arena_max, malloc_mmap_threshold(config))
        self.stop = stop or threading.Event()
        self.observers = list(observers)
        self.coordinator = coordinator or LocalCoordinator()
        self.primary = self.coordinator.rank == 0
        self.device = self.coordinator.place(resolve_device(config.train.device))
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.encoder = FeatureEncoder(config.model.features)
        self.schema = event_schema(config.model.features)
        names = (config.model.kind, *[k for k in config.daemon.shadow_models if k != config.model.kind])
        self.slots = [self._slot(name) for name in names]
        self.store = CheckpointStore(config.daemon.checkpoint_dir, config.daemon.keep_checkpoints)
        self.index_sync = self._index_sync() if config.index.enabled and self.primary else None
        self.telemetry = self._telemetry() if config.monitoring.enabled else None
        self.audit = TrainedEventLog(config.daemon.audit_log) if config.daemon.audit_log and self.primary else None
        models = [s.name for s in self.slots]
        self.feedback = JoinedFeedback(config, self.schema, models) if config.feedback.joined else None
        # Labelled events: a producer's retry is trained once (joined feedback: the joiner does it).
        self.recent_ids = RecentIds(config.feedback.dedup_ids) if self.feedback is None else None
        self._unrecorded_keys: list[int] = []  # this iteration's fresh ids, remembered once it trains
        digests = config.daemon.parameter_digest_dir
        self.digests = ParameterDigestLog(digests, self.coordinator.rank) if digests else None
        self.offsets: dict[int, int] = {}  # next offset of each partition this rank reads
        self._restored_offsets: dict[int, int] = {}
        self._restored_name: str | None = None  # the checkpoint restored, if any
        self.init_watermark_ms: int | None = None  # set by a warm start: the latest event time the fit covered
        self.events = 0  # the job's: identical on every rank
        self.dead_lettered: Counter[str] = Counter()  # this rank's (rank 0: plus the restored totals)
        self._job_dead_lettered: Counter[str] = Counter()  # every rank's, as of the last checkpoint
        self._dead_letters_seen = 0  # every rank's, up to now (rank 0's status line)
        self._lag = 0
        self._stand_in = stand_in_batch(self.encoder) if self.coordinator.world_size > 1 else None
        self.checkpoints_written = 0
        self._events_at_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_status = time.monotonic()
        self._last_commit = time.monotonic()
        self._last_event = time.monotonic()
        self._events_at_status = 0
        self.history = QualityClock(config.daemon.history_every_events, config.daemon.history_max_points)
        self._first_batch_at: float | None = None
        self._last_telemetry = 0.0
        self._last_batch_at = 0.0
        self._last_memory_report = time.monotonic()
        self._traced_growth = TracedGrowth()
        self._trim = PeriodicTrim(config.daemon.malloc_trim_every_s, time.monotonic())
        self._malloc_infos = 0

    def _slot(self, name: str) -> ModelSlot:
        torch.manual_seed(self.config.train.seed)
        # A shadow LR has no towers for CS3's add-ons: it stays the plain baseline.
        cs3 = CS3Config() if name == "lr" else self.config.model.cs3
        model = build_model(replace(self.config.model, kind=name, cs3=cs3)).to(self.device)
        window = self.config.daemon.metric_window
        return ModelSlot(name, OnlineTrainer(model, self.config.train, self.config.online), RollingAUC(window), RollingLogLoss(window))

    def _telemetry(self) -> Telemetry:
        """Rank 0 exports everything; other ranks their own stream metrics (see `Telemetry`)."""
        if not self.coordinator.launched:
            return Telemetry(self.config.monitoring, [s.name for s in self.slots])
        models = [s.name for s in self.slots] if self.primary else []
        return Telemetry(self.config.monitoring, models, rank=self.coordinator.rank)

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
            if self.audit is not None:  # a run killed before its first checkpoint left lines no model holds
                self.audit.truncate(0)
            if self.config.daemon.init_from:
                self._warm_start(self.config.daemon.init_from)
            return False
        meta = checkpoint.metadata
        for slot in self.slots:
            if not checkpoint.has(slot.part):
                raise UserError(
                    f"{checkpoint.path}: has no state for model {slot.name!r} (it holds {', '.join(meta['models'])}); "
                    "use another daemon.checkpoint_dir to start fresh"
                )
            try:
                load_trainer(slot.trainer, read_state(checkpoint, slot.part, self.device), checkpoint.path)
            except WarmStartError as exc:
                raise UserError(f"{exc}; use another daemon.checkpoint_dir") from None
            slot.auc.load_state_dict(meta["metrics"][slot.name]["auc"])
            slot.logloss.load_state_dict(meta["metrics"][slot.name]["logloss"])
        if self.index_sync is not None:
            self.index_sync.restore({p: checkpoint.read(p) for p in INDEX_CHECKPOINT_PARTS if checkpoint.has(p)})
        if self.recent_ids is not None:
            ranks = int(meta.get("dedup_ranks", 0))
            self.recent_ids = RecentIds.from_states(self.config.feedback.dedup_ids,
                                                    [checkpoint.read(DEDUP_PART.format(rank=r)) for r in range(ranks)])
        if self.feedback is not None:  # taken apart by partition once this rank knows its share (`run`)
            self.feedback.restore(str(checkpoint.path), meta, checkpoint.read)
        self.offsets = {int(p): int(o) for p, o in meta["offsets"].items()}
        self._restored_offsets = dict(self.offsets)
        self.events = int(meta["events"])
        self.dead_lettered = Counter(meta["dead_lettered"]) if self.primary else Counter()
        self._dead_letters_seen = sum(meta["dead_lettered"].values())
        self._events_at_checkpoint = self._events_at_status = self.events
        if self.audit is not None:
            self.audit.truncate(int(meta["audit_position"]))
        self._restored_name = checkpoint.path.name
        log.info("restored %s: %d events, offsets %s", checkpoint.path.name, self.events, self.offsets)
        return True

    def _warm_start(self, path: str) -> None:
        """Start from a fitted checkpoint (no checkpoint of our own yet): weights, Adam state, step count.

        Only the trainer state is taken: offsets, metrics and counters start fresh, and
        the daemon's first checkpoint supersedes it for every restart after.
        """
        try:
            found, loaded = warm_start(path, self.config.model, {s.name: s.trainer for s in self.slots}, self.device)
        except WarmStartError as exc:
            raise UserError(f"--init-from: {exc}") from None
        for name in sorted({s.name for s in self.slots} - set(loaded)):
            log.info("warm start: %s holds no %s model; it starts fresh", found.path, name)
        self.init_watermark_ms = found.metadata.get("watermark_ms")
        log.info("warm start from %s (%s, events up to %s)", found.path, ", ".join(loaded), self.init_watermark_ms)

    def checkpoint(self) -> None:
        """Every rank calls it at the same iteration; rank 0 writes every rank's offsets."""
        started = time.perf_counter()
        join_state = self.feedback.share() if self.feedback is not None else None
        recent = self.recent_ids.state_bytes() if self.recent_ids is not None else None
        shares = self.coordinator.gather((dict(self.offsets), dict(self.dead_lettered), join_state, recent))
        self._events_at_checkpoint = self.events
        self._last_checkpoint = time.monotonic()
        if shares is None:
            return
        offsets = merge_offsets(self._restored_offsets, [share[0] for share in shares])
        self._job_dead_lettered = sum((Counter(share[1]) for share in shares), Counter())
        parts = {}
        for slot in self.slots:
            parts[slot.part] = serialize_state(slot.trainer.state_dict())
        if self.index_sync is not None:
            parts.update(self.index_sync.checkpoint_parts())
        for rank, share in enumerate(shares):
            if share[3] is not None:
                parts[DEDUP_PART.format(rank=rank)] = share[3]
        feedback_meta = {}
        if self.feedback is not None:
            feedback_parts, feedback_meta = self.feedback.checkpoint([share[2] for share in shares])
            parts.update(feedback_parts)
        if self.audit is not None:
            self.audit.sync()
        metadata = {
            "models": [s.name for s in self.slots],
            "model_config": config_dict(self.config.model),
            "offsets": {str(p): o for p, o in sorted(offsets.items())},
            "events": self.events,
            "dead_lettered": dict(self._job_dead_lettered),
            "audit_position": self.audit.position() if self.audit is not None else 0,
            "dedup_ranks": len(shares) if self.recent_ids is not None else 0,
            "metrics": {s.name: {"auc": s.auc.state_dict(), "logloss": s.logloss.state_dict()} for s in self.slots},
            **feedback_meta,
        }
        written = self.store.save(parts, metadata)
        if self.telemetry is not None:
            self.telemetry.on_checkpoint(time.perf_counter() - started)
        if self.index_sync is not None:
            self.index_sync.checkpoint_name = str(written.path)
        self.checkpoints_written += 1
        log.info("checkpoint %s at %d events (%.2f s)", written.path.name, self.events, time.perf_counter() - started)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> DaemonSummary:
        started = time.monotonic()
        self.restore()
        self._check_same_restore()
        for slot in self.slots:
            self.coordinator.replicate(slot.trainer)
        try:
            partitions = partition_share(self.coordinator, self.config.stream)
        except (TopicNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
        stream = self.config.stream
        if self.init_watermark_ms is not None and stream.start_at == "earliest":
            # Warm-started: the fit covered events up to its watermark; the stream goes on after it.
            stream = replace(stream, start_at=self.init_watermark_ms + 1)
            log.info("warm start: partitions without a position start after the fit's watermark (set [stream] start_at "
                     "to override; 0 reads every event)")
        if self.feedback is not None:
            partitions = self.feedback.partitions(partitions)
        if partitions is not None:
            stream = replace(stream, assignment="static")
            self.offsets = {p: o for p, o in self.offsets.items() if p in partitions}
        if self.feedback is not None:
            self.feedback.start(partitions)
        consumer = ClickStreamConsumer(stream, self.schema, start_offsets=dict(self.offsets), partitions=partitions,
                                       joined=self.feedback is not None)
        dead_letters = DeadLetterWriter(self.config.stream)
        self._last_event = time.monotonic()
        if self.telemetry is not None:
            try:
                self.telemetry.serve()
            except UserError:  # the metrics port is taken: leave the group before saying so
                consumer.close()
                dead_letters.close()
                raise
        if self.index_sync is not None:
            self.index_sync.start()
        agreed_stop, busy, between_iterations = False, False, True
        try:
            while True:
                stopping = self.stop.is_set() or self._should_stop()
                wait = BUSY_POLL_S if busy and self.coordinator.world_size > 1 else POLL_TIMEOUT_S
                batch = None if stopping else consumer.next_batch(timeout_s=wait)
                if batch is not None and self.recent_ids is not None:
                    batch = self._without_duplicates(batch)
                clicks = self.feedback.next_clicks() if self.feedback is not None and not stopping else None
                rejects = len(batch.rejects) if batch is not None else 0
                agreement = self.coordinator.agree(Vote(batch.events if batch is not None else 0, stopping,
                                                        self._checkpoint_timer_fired(), self._lag, rejects))
                if agreement.stop:  # a batch taken this iteration is dropped: its offsets never advanced
                    agreed_stop = True
                    break
                between_iterations = False  # the model may learn a batch its offsets do not yet cover
                self._process(batch, agreement, dead_letters, clicks)
                between_iterations = True
                self._timers(consumer, agreement)
                busy = agreement.total_rows > 0
        finally:
            if self.index_sync is not None:
                self.index_sync.stop()
            # Ranks that did not agree to stop cannot gather offsets: the last checkpoint stands.
            if agreed_stop or (self.coordinator.world_size == 1 and between_iterations):
                self.checkpoint()
            elif self.coordinator.world_size == 1:
                log.warning("failed inside an iteration: no final checkpoint, a restart resumes from the last one")
            else:
                log.warning("rank %d: the job did not stop together (a rank failed?); no final checkpoint, "
                            "a restart resumes from the last one", self.coordinator.rank)
            consumer.commit(dict(self.offsets))
            consumer.close()
            if self.feedback is not None:
                self.feedback.close()
            dead_letters.close()
            if self.audit is not None:
                self.audit.close()
            if self.telemetry is not None:
                self.telemetry.close()
        return DaemonSummary(
            events=self.events,
            dead_lettered=dict(self._job_dead_lettered),
            seconds=time.monotonic() - started,
            streaming_seconds=(self._last_batch_at - self._first_batch_at) if self._first_batch_at else 0.0,
            checkpoints=self.checkpoints_written,
            models={s.name: {"auc": s.auc.get(), "logloss": s.logloss.get()} for s in self.slots},
        )

    def _check_same_restore(self) -> None:
        """Every rank must start from the same checkpoint (a checkpoint_dir not truly shared
        between hosts would otherwise desynchronise the collectives and hang the job)."""
        if self.coordinator.world_size == 1:
            return
        state = (self._restored_name, self.events, [s.trainer.steps for s in self.slots])
        states = self.coordinator.gather(state)
        verdict = None
        if states is not None and any(s != states[0] for s in states):
            verdict = ("the ranks restored different checkpoints (" + "; ".join(
                f"rank {r}: {s[0] or 'none'} at {s[1]} events" for r, s in enumerate(states))
                + "): daemon.checkpoint_dir must be storage every rank shares")
        verdict = self.coordinator.broadcast(verdict)
        if verdict is not None:
            raise UserError(verdict)

    def _join(self, batch: Batch | None, clicks: Batch | None, agreement: Agreement,
              dead_letters: DeadLetterWriter) -> tuple[Batch | None, Agreement]:
        """Joined feedback: train on what the joiner releases (`inttower.feedback`).

        Every rank calls it every iteration: what the ranks release differs from what they
        read, so a second all-reduce agrees on the step's rows.
        """
        batch, click_rejects = self.feedback.join(batch, clicks, self._arrival_scores)
        if click_rejects:
            dead_letters.write(click_rejects, self.config.feedback.clicks_topic)
            self.dead_lettered.update(r.reason for r in click_rejects)
            if self.telemetry is not None:
                self.telemetry.on_rejects(click_rejects)
        if self.feedback.current is not None and self.telemetry is not None:
            self.telemetry.on_join(self.feedback.current, self.feedback.joiner)
        released = batch.events if batch is not None else 0
        if self.coordinator.world_size == 1:
            return batch, replace(agreement, rows=(released,))
        return batch, replace(agreement, rows=self.coordinator.agree(Vote(released)).rows)

    def _arrival_scores(self, events: pa.Table) -> dict[str, np.ndarray]:
        """Every model's prediction for events as they arrive (what serving would return now)."""
        features = self.encoder.encode(events)
        return {slot.name: slot.trainer.predict(features).cpu().numpy().astype(np.float64) for slot in self.slots}

    def _without_duplicates(self, batch: Batch) -> Batch:
        """Labelled events: drop ids seen within the window (remembered only once the batch trains, `_process`)."""
        keys = RecentIds.keys(batch.table.column("event_id"))
        fresh = self.recent_ids.fresh(keys)
        if fresh.all():
            self._unrecorded_keys = keys
            return batch
        self._unrecorded_keys = [k for k, f in zip(keys, fresh) if f]
        if self.telemetry is not None:
            self.telemetry.metrics.events_duplicates.inc(int((~fresh).sum()))
        return replace(batch, table=batch.table.filter(pa.array(fresh)))

    def _process(self, batch: Batch | None, agreement: Agreement, dead_letters: DeadLetterWriter,
                 clicks: Batch | None = None) -> None:
        if self.recent_ids is not None and batch is not None:
            self.recent_ids.record(self._unrecorded_keys)
            self._unrecorded_keys = []
        if self.feedback is not None:
            batch, agreement = self._join(batch, clicks, agreement, dead_letters)
        if batch is not None:
            self._first_batch_at = self._first_batch_at or time.monotonic()
            if batch.rejects:
                dead_letters.write(batch.rejects, self.config.stream.topic)
                self.dead_lettered.update(r.reason for r in batch.rejects)
        # One optimizer step per at most max_batch_events rows of every rank: a joiner may
        # release far more at once (a watermark jump), an Arrow message may hold more.
        for start, part in step_slices(agreement, self.config.stream.max_batch_events):
            mine = part.rows[self.coordinator.rank]
            self._step(batch.table.slice(start, mine) if mine else None, part, start)
        if batch is not None:
            if self.telemetry is not None:
                self.telemetry.on_consumed(batch)
            self.offsets.update(batch.next_offsets)
            self._last_batch_at = time.monotonic()
        self.events += agreement.total_rows
        self._dead_letters_seen += agreement.dead_letters

    def _step(self, table: pa.Table | None, agreement: Agreement, start: int) -> None:
        """One synchronized step over ``table`` (this rank's rows ``start`` ... of the batch; None: a stand-in)."""
        # A rank without events still steps (weight 0): DDP's all-reduce needs every rank.
        features = self.encoder.encode(table) if table is not None else self._stand_in
        weight = agreement.loss_weight(self.coordinator.rank)
        fnw, in_window = None, 0.0
        if table is not None and self.feedback is not None:
            fnw, in_window = self.feedback.fnw_rows(start, start + table.num_rows), self.feedback.fnw_in_window
        results: dict[str, StepResult] = {}
        for slot in self.slots:
            results[slot.name] = slot.trainer.step(features, weight, agreement.total_rows, fnw_rows=fnw,
                                                   fnw_in_window=in_window)
        if table is not None:
            for observer in self.observers:
                observer.on_batch(table, results)
        if self.digests is not None:
            self.digests.append(self.slots[0].trainer.steps, [s.trainer.model for s in self.slots])
        self._last_event = time.monotonic()
        record = self._step_record(table, results, start)
        if record is not None:
            self._record(record)

    def _step_record(self, table: pa.Table | None, results: dict[str, StepResult], start: int) -> StepRecord | None:
        """Every rank's events of this step, on rank 0 (None elsewhere)."""
        audit, index = self.config.daemon.audit_log is not None, self.config.index.enabled
        joined = None
        if self.feedback is not None and self.feedback.current is not None and table is not None:
            joined = self.feedback.record(table, results, audit, index, start)
        if self.coordinator.world_size == 1:
            return joined if joined is not None else StepRecord.of_batch(table, results, audit, index)
        if joined is not None:
            share = StepShare.of_record(joined)
        else:
            share = StepShare.of(table, results, audit, index) if table is not None else None
        shares = self.coordinator.gather(share)
        return StepRecord.merged(shares, results) if shares is not None else None

    def _record(self, step: StepRecord) -> None:
        for i, slot in enumerate(self.slots):
            result = step.results[slot.name]
            slot.auc.update(result.labels, result.probabilities)
            slot.logloss.update(result.labels, result.probabilities)
            if i == 0 and result.stepped and self.audit is not None:
                self.audit.append(step.event_ids)
        if self.index_sync is not None:
            self.index_sync.observe(step.items)
        if self.telemetry is not None:
            self.telemetry.on_step(step.results, step.event_ts_ms)
        self.history.add(step.event_ts_ms, self.events, self.slots)

    def _timers(self, consumer: ClickStreamConsumer, agreement: Agreement) -> None:
        if self.index_sync is not None:
            self.index_sync.serve_handoff()
        now = time.monotonic()
        if now - self._last_telemetry >= TELEMETRY_EVERY_S:
            # Lag reads the consumer thread's state under its lock: not on every batch.
            lag = consumer.lag()
            self._lag = sum(v for v in lag.values() if v is not None)
            if self.feedback is not None:
                self._lag += self.feedback.lag()
            if self.telemetry is not None:
                self.telemetry.on_lag(lag)
                if self.index_sync is not None:
                    self.telemetry.on_index(self.index_sync)
            self._last_telemetry = now
        daemon = self.config.daemon
        if now - self._last_commit >= daemon.commit_every_s:
            consumer.commit(dict(self.offsets))
            if self.feedback is not None:
                self.feedback.commit()
            self._last_commit = now
        # Same inputs on every rank (the job's event count, rank 0's timer vote): all or none.
        if self.events > self._events_at_checkpoint and (
            agreement.checkpoint or self.events - self._events_at_checkpoint >= daemon.checkpoint_every_events
        ):
            self.checkpoint()
        if self.primary and now - self._last_status >= daemon.status_every_s:
            self._status(agreement.lag, now)
        self._trim.maybe_trim(now)
        if daemon.memory_report_every_s and now - self._last_memory_report >= daemon.memory_report_every_s:
            self._memory_report()
            self._last_memory_report = now

    def _checkpoint_timer_fired(self) -> bool:
        return self.primary and time.monotonic() - self._last_checkpoint >= self.config.daemon.checkpoint_every_s

    def _status(self, lag: int, now: float) -> None:
        rate = (self.events - self._events_at_status) / max(now - self._last_status, 1e-9)
        quality = "  ".join(f"{s.name} auc {s.auc.get():.4f} logloss {s.logloss.get():.4f}" for s in self.slots)
        skipped = sum(sum(s.trainer.skipped.values()) for s in self.slots)
        log.info(
            "events %d (%.0f/s)  lag %d  %s  dead-lettered %d  skipped steps %d  checkpoint %.0f s ago%s",
            self.events, rate, lag, quality, self._dead_letters_seen, skipped, now - self._last_checkpoint,
            self._index_status(),
        )
        self._last_status, self._events_at_status = now, self.events

    def bounded_sizes(self) -> dict[str, int]:
        """Entries held by every structure that could grow with time (each is bounded by a setting)."""
        sizes = {f"history points ({s.name})": len(s.history) for s in self.slots}
        if self.index_sync is not None:
            sizes.update(self.index_sync.bounded_sizes())
        if self.feedback is not None:
            sizes.update(self.feedback.bounded_sizes())
        if self.recent_ids is not None:
            sizes["recent event ids"] = len(self.recent_ids)
        return sizes

    def _memory_report(self) -> None:
        """Where memory is (see `monitoring.memory`): one log line, plus Python's growth by line when tracing."""
        sizes = ", ".join(f"{name} {n:,}" for name, n in self.bounded_sizes().items())
        trimmed = f"; {self._trim.line()}" if self._trim.trims else ""
        log.info("memory at %d events: %s%s; sizes: %s", self.events, read_memory().line(), trimmed, sizes)
        info_dir = self.config.daemon.malloc_info_dir
        if info_dir:
            os.makedirs(info_dir, exist_ok=True)
            self._malloc_infos += 1
            write_malloc_info(os.path.join(info_dir, f"malloc-{self._malloc_infos:06d}-events-{self.events}.xml"))
        grown = self._traced_growth.top()
        if grown:
            log.info("python allocations grown since the first memory report:\n  %s", "\n  ".join(grown))

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
