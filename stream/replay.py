"""Replay a logged click log into the click topic, as live traffic would arrive.

Rows are produced in event-time order (stable sort by ``ts``), keyed by user: JSON
messages carry key ``str(user_id)`` and go where Kafka's default murmur2 partitioner puts
that key; Arrow messages are cut per partition with the same murmur2 rule and sent with an
explicit partition, so a user's events land on the same partition in both formats and
stay in time order within it.

Record timestamps are the send time by default. With ``stamp_event_times`` they are
event times (a JSON message's is its event's ``ts``, an Arrow message's the largest
``ts`` of its rows), so Kafka's offsets-for-times answer for a time never lies past a
message holding an event at or after it (``[stream] start_at`` then jumps close to its
start instead of reading from earliest). Not the default: Kafka's time-based retention
reads record timestamps too, and would delete a replayed old log at once unless the
topic keeps it (``retention.ms = -1``). A negative ``ts`` keeps the send time.

Pacing: ``rate`` events per second; or ``speedup`` (event-time gaps divided by it); or,
with neither, as fast as the producer goes. An Arrow message is sent when its last event
is due, and when paced it holds at most PACED_CHUNK_S seconds of traffic, so consumers
see a steady trickle rather than rare large messages.

Replay only produces: it never touches a model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from tqdm import tqdm

from stream.clicklog import read_click_log, validate_schema
from stream.codec import ARROW_HEADERS, JSON_HEADERS, encode_arrow_batch, table_to_json_events
from stream.config import StreamConfig, kafka_client_options

logger = logging.getLogger(__name__)

#: Producer batching: wait up to this long to fill a produce batch.
LINGER_MS = 20
#: Producer batch size for JSON (many small messages per request).
PRODUCER_BATCH_BYTES = 256 * 1024
#: Room for headers, key and framing above the largest message in one request.
REQUEST_OVERHEAD_BYTES = 64 * 1024
#: When paced, an Arrow message covers at most this much replay time.
PACED_CHUNK_S = 0.2
#: Sleeps shorter than this are skipped (a send is late by at most this much).
MIN_SLEEP_S = 0.001
#: How long the final flush may take before replay gives up.
FLUSH_TIMEOUT_S = 120.0
#: Rows converted to Python objects at a time for JSON.
JSON_CHUNK_ROWS = 8192
MS_PER_S = 1000.0


@dataclass(frozen=True)
class ReplaySummary:
    """What was produced: events, Kafka messages, wall seconds, events per second."""

    events: int
    messages: int
    seconds: float
    events_per_s: float


class ReplayError(RuntimeError):
    """Some messages could not be produced; the message says how many and the first error."""


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition kafka-python's DefaultPartitioner (and Java's) picks for ``key``.

    Assumes partition ids 0..partitions-1, as every Kafka topic has.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def user_partitions(user_ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Partition of each row's user (murmur2 of str(user_id)), computed once per distinct user."""
    unique = pc.unique(user_ids)
    table = np.array([partition_for_key(str(u).encode(), partitions) for u in unique.to_pylist()], dtype=np.int32)
    return table[pc.index_in(user_ids, value_set=unique).to_numpy(zero_copy_only=False)]


def _due_times(ts: np.ndarray, rate: float | None, speedup: float | None) -> np.ndarray | None:
    """Seconds after the start at which each event is due, or None when unpaced."""
    if rate is not None:
        return np.arange(len(ts), dtype=np.float64) / rate
    if speedup is not None:
        return (ts - ts[0]).astype(np.float64) / MS_PER_S / speedup if len(ts) else np.zeros(0)
    return None


def _arrow_chunks(rows_partition: np.ndarray, due: np.ndarray | None, max_rows: int) -> list[tuple[int, np.ndarray]]:
    """(partition, row indices) chunks in send order: by the due time of each chunk's last row.

    Each chunk holds rows of one partition, in time order, at most ``max_rows`` of them
    and, when paced, at most PACED_CHUNK_S of replay time.
    """
    chunks: list[tuple[int, np.ndarray]] = []
    for p in np.unique(rows_partition):
        rows = np.flatnonzero(rows_partition == p)
        if due is None:
            starts = range(0, len(rows), max_rows)
            chunks.extend((int(p), rows[s : s + max_rows]) for s in starts)
            continue
        start = 0
        times = due[rows]
        while start < len(rows):
            end = min(start + max_rows, int(np.searchsorted(times, times[start] + PACED_CHUNK_S, side="right")))
            end = max(end, start + 1)
            chunks.append((int(p), rows[start:end]))
            start = end
    chunks.sort(key=lambda chunk: int(chunk[1][-1]))  # rows are time-sorted: last index = last due
    return chunks


class _Pacer:
    """Sleeps until a due time (seconds after start)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def wait(self, due_s: float) -> None:
        delay = self.start + due_s - time.monotonic()
        if delay > MIN_SLEEP_S:
            time.sleep(delay)


class _Failures:
    """Counts failed sends (called from the producer's I/O thread)."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, exc: BaseException) -> None:
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = exc


class ReplayProducer:
    """A producer set up for replays (acks=1, batching, room for the largest message) that counts sends and failures.

    `flush` waits for every send and raises `ReplayError` if any failed; `close` always runs last.
    """

    def __init__(self, config: StreamConfig) -> None:
        self.topic = config.topic
        self.sent = 0
        self.failures = _Failures()
        self.producer = KafkaProducer(
            acks=1,
            linger_ms=LINGER_MS,
            batch_size=PRODUCER_BATCH_BYTES,
            max_request_size=config.max_message_bytes + REQUEST_OVERHEAD_BYTES,
            **kafka_client_options(config),
        )

    def send(self, topic: str, **message: object) -> None:
        self.producer.send(topic, **message).add_errback(self.failures)
        self.sent += 1

    def partitions(self, topic: str) -> list[int]:
        return sorted(self.producer.partitions_for(topic))

    def flush(self) -> None:
        self.producer.flush(timeout=FLUSH_TIMEOUT_S)
        if self.failures.count:
            raise ReplayError(f"{self.failures.count} of {self.sent} messages to {self.topic} failed; "
                              f"first error: {self.failures.first!r}")

    def close(self) -> None:
        self.producer.close(timeout=FLUSH_TIMEOUT_S)


def record_timestamp(ts: int | None, stamp: bool = True) -> int | None:
    """The Kafka record timestamp for event time ``ts``: itself, or None (the send time) when negative, null or not ``stamp``."""
    return ts if stamp and ts is not None and ts >= 0 else None


def _split_to_fit(table: pa.Table, max_bytes: int, stamp: bool) -> Iterator[tuple[bytes, int | None]]:
    """Arrow messages for ``table`` no longer than ``max_bytes`` (halving until they fit), with their record timestamps."""
    encoded = encode_arrow_batch(table)
    if len(encoded) <= max_bytes or table.num_rows <= 1:
        if len(encoded) > max_bytes:
            logger.warning("one event encodes to %d bytes > max_message_bytes %d; consumers will dead-letter it", len(encoded), max_bytes)
        yield encoded, record_timestamp(pc.max(table.column("ts")).as_py(), stamp)
        return
    half = table.num_rows // 2
    yield from _split_to_fit(table.slice(0, half), max_bytes, stamp)
    yield from _split_to_fit(table.slice(half), max_bytes, stamp)


def replay(
    log: pa.Table | str | Path,
    config: StreamConfig,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    fmt: Literal["json", "arrow"] = "json",
    arrow_batch_events: int = 2048,
    progress: bool = True,
    stamp_event_times: bool = False,
) -> ReplaySummary:
    """Produce every event of ``log`` (a click-log table or Parquet path) to ``config.topic``.

    Uses ``config``'s bootstrap servers, topic, security settings and
    ``max_message_bytes`` (Arrow messages are split to stay under it). Blocks until every
    message is acknowledged (acks=1); raises `ReplayError` if any send failed.
    """
    if rate is not None and speedup is not None:
        raise ValueError("give rate or speedup, not both")
    if (rate is not None and rate <= 0) or (speedup is not None and speedup <= 0):
        raise ValueError(f"rate and speedup must be positive, got rate={rate} speedup={speedup}")
    if fmt not in ("json", "arrow"):
        raise ValueError(f"fmt must be 'json' or 'arrow', got {fmt!r}")
    if arrow_batch_events < 1:
        raise ValueError(f"arrow_batch_events must be >= 1, got {arrow_batch_events}")
    if isinstance(log, pa.Table):
        validate_schema(log.schema, "replayed table")
        table = log
    else:
        table = read_click_log(log, index_ids=False)
    table = table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))  # Arrow's sort is stable
    ts = table.column("ts").to_numpy()
    due = _due_times(ts, rate, speedup)

    producer = ReplayProducer(config)
    pacer = _Pacer()
    bar = tqdm(total=table.num_rows, unit="ev", desc=f"replay {fmt} -> {config.topic}", disable=not progress)
    try:
        if fmt == "json":
            _replay_json(producer, table, config.topic, due, pacer, bar, stamp_event_times)
        else:
            partitions = producer.partitions(config.topic)
            rows_partition = user_partitions(table.column("user_id"), len(partitions))
            for p, rows in _arrow_chunks(rows_partition, due, arrow_batch_events):
                if due is not None:
                    pacer.wait(float(due[rows[-1]]))
                for value, timestamp_ms in _split_to_fit(table.take(pa.array(rows)), config.max_message_bytes, stamp_event_times):
                    producer.send(config.topic, value=value, partition=partitions[p], headers=ARROW_HEADERS,
                                  timestamp_ms=timestamp_ms)
                bar.update(len(rows))
        producer.flush()
    finally:
        bar.close()
        producer.close()
    seconds = time.monotonic() - pacer.start
    messages = producer.sent
    summary = ReplaySummary(table.num_rows, messages, seconds, table.num_rows / seconds if seconds > 0 else 0.0)
    logger.info(
        "replayed %d events in %d %s messages to %s in %.1f s (%.0f events/s)",
        summary.events, summary.messages, fmt, config.topic, summary.seconds, summary.events_per_s,
    )
    return summary


def _replay_json(
    producer: ReplayProducer,
    table: pa.Table,
    topic: str,
    due: np.ndarray | None,
    pacer: _Pacer,
    bar: tqdm,
    stamp: bool,
) -> int:
    keys = [str(u).encode() for u in table.column("user_id").to_pylist()]
    timestamps = [record_timestamp(ts, stamp) for ts in table.column("ts").to_pylist()]
    sent = 0
    for index, value in enumerate(table_to_json_events(table, JSON_CHUNK_ROWS)):
        if due is not None:
            pacer.wait(float(due[index]))
        producer.send(topic, value=value, key=keys[index], headers=JSON_HEADERS, timestamp_ms=timestamps[index])
        sent += 1
        if sent % JSON_CHUNK_ROWS == 0:
            bar.update(JSON_CHUNK_ROWS)
    bar.update(sent % JSON_CHUNK_ROWS)
    return sent
