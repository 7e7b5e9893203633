"""Consume the click topic into decoded, validated `Batch`es, with exact offsets for checkpoints.

`ClickStreamConsumer` runs one background thread that owns the Kafka client
(`stream.consumer_clients`: kafka-python or confluent-kafka, per ``[stream] client``; used
from that thread only): it polls, cuts the messages into batches, decodes them
(`stream.codec.decode_messages`) and puts them on a bounded queue, so fetching and
decoding overlap with the caller's training step. The caller takes batches with
`next_batch`, and asks for offset commits with `commit`; the thread executes them.

Offsets: the checkpoint, not the consumer group, is the source of truth. The consumer
starts each partition at ``start_offsets[p]`` (from a checkpoint) or at the earliest
offset, and after any group rebalance (a broker pause, a member joining) it seeks every
assigned partition back to its *own* next offset: the one after the last message it has
handed out. So a rebalance never skips or repeats an event, and a restart from a
checkpoint's ``next_offsets`` reads every event exactly once across runs. Committed group
offsets only serve lag monitoring and are never read back (unless ``start_at`` says so,
below).

Partitions without a position (no ``start_offsets`` entry, none of its own yet) start
where ``[stream] start_at`` says, decided once per partition (a later assignment reuses
the decision): ``"earliest"`` (default); ``"latest"``: the partition's end when first
assigned (the highwater of a fetch: a ListOffsets end is wrong on Tansu); ``"committed"``:
the group's committed offset, else earliest. The offset ``latest``/``committed`` chose is
the partition's position from then on, so every batch's ``next_offsets`` carries it and a
checkpoint keeps it (a restart does not choose again).

``start_at`` an event time T: each partition starts at its first event, in offset order,
whose ``ts`` >= T, and everything after that event is consumed normally (later events
with ts < T included). The polling thread reads the partition from a start hint and drops
what precedes that event: whole messages, and in an Arrow message the rows before its
first qualifying row. Only ``ts`` is read to find the event, so what is dropped is
neither validated nor dead-lettered. A dropped message advances ``next_offsets`` like a
rejected one; `skipped_before_start` counts the dropped events, and one INFO line per
partition says where it started. The hint is Kafka's offsets-for-times answer for T,
which is exact when record timestamps are event times (`stream.replay` writes a JSON
message's ``ts``, an Arrow message's largest ``ts``) and the broker looks up record
timestamps (Apache Kafka, CreateTime topics). It is trusted only when the first message
read from it is the record the broker named (same offset and timestamp) and that
record's timestamp is its event time (its ``ts``; for Arrow its largest ``ts``);
otherwise the partition is read from its earliest offset. The check catches Tansu (it
looks up append times, not record timestamps), LogAppendTime topics and producers that
leave record timestamps at their send time; it cannot catch a producer that sets event
times on some records and not on others. No answer (T after every record; on Tansu
offset 0 with timestamp -1) or one not past the earliest offset reads from earliest.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from stream.broker import wait_for_broker
from stream.codec import (
    RawMessage,
    Reject,
    count_events,
    decode_messages,
    drop_leading_events,
    event_span,
    event_times,
)
from stream.config import StreamConfig, kafka_client_options, resolve_check_crcs
from stream.consumer_clients import ConsumerClient, OffsetLookup, Positions, open_client
from stream.events import EventSchema
from stream.feedback_wire import decode_feedback

log = logging.getLogger(__name__)

#: Longest single poll: bounds how late a commit request or `close` is noticed.
POLL_TIMEOUT_MS = 100
#: How long the polling thread waits for queue space before re-checking stop/commits.
QUEUE_WAIT_S = 0.1
#: Bound on one synchronous commit; a failed commit is retried after COMMIT_RETRY_S.
COMMIT_TIMEOUT_MS = 5000
COMMIT_RETRY_S = 1.0
#: Bound on closing the client (it leaves the group, which needs the broker).
CONSUMER_CLOSE_TIMEOUT_MS = 5000
#: How long `close` waits for the polling thread (poll + commit + consumer close, with margin).
THREAD_JOIN_TIMEOUT_S = 15.0


@dataclass
class Batch:
    """Decoded valid events of consecutive messages, plus what a checkpoint needs.

    ``next_offsets``: for *every* partition this consumer has positions for (not only those
    in this batch), the offset after the last message handed out up to and including this
    batch, rejected messages included. A checkpoint stores it as-is and a restart passes it
    as ``start_offsets``. ``first_offsets``: the first message offset of each partition
    present in this batch. ``messages``: Kafka messages covered (an Arrow message holds
    many events). ``closed_at``: wall-clock time (time.time()) the batch was cut.
    """

    table: pa.Table
    next_offsets: dict[int, int]
    rejects: list[Reject]
    first_offsets: dict[int, int]
    messages: int
    closed_at: float
    events_by_partition: dict[int, int] = field(default_factory=dict)  # valid rows per partition
    # Joined feedback (`[feedback] mode = "joined"`): the batch's clicks
    # (`stream.feedback_wire.CLICK_SCHEMA`) and each partition's largest event time.
    clicks: pa.Table | None = None
    max_ts: dict[int, int] = field(default_factory=dict)
    event_partitions: np.ndarray | None = None  # joined feedback: each table row's partition

    @property
    def events(self) -> int:
        """Valid events in the batch (rows of ``table``)."""
        return self.table.num_rows


class ConsumerFailedError(RuntimeError):
    """The polling thread died; the cause is chained. Restart from the last checkpoint."""


@dataclass
class _Pending:
    """Messages fetched but not yet in a batch (polling thread only)."""

    messages: collections.deque[RawMessage] = field(default_factory=collections.deque)
    counts: collections.deque[int] = field(default_factory=collections.deque)
    arrived: collections.deque[float] = field(default_factory=collections.deque)  # time.monotonic()
    # (earliest, latest) ts of each message when batches are cut by event-time span; None: no ts
    times: collections.deque[tuple[int, int] | None] = field(default_factory=collections.deque)
    events: int = 0

    def clear(self) -> None:
        self.messages.clear()
        self.counts.clear()
        self.arrived.clear()
        self.times.clear()
        self.events = 0


def _fits_span(times: tuple[int, int] | None, low: int | None, high: int | None,
               span_ms: int) -> tuple[bool, int | None, int | None]:
    """Whether a message with event times ``times`` joins a batch spanning [low, high] within ``span_ms``; the new range."""
    if times is None or not span_ms:
        return True, low, high
    new_low = times[0] if low is None else min(low, times[0])
    new_high = times[1] if high is None else max(high, times[1])
    return new_high - new_low <= span_ms, new_low, new_high


@dataclass
class _StartSearch:
    """A partition read until its first event with ts >= ``start_at_ms`` (polling thread only).

    Kept until a message of the partition is in a batch: a rebalance before that re-reads
    from the partition's position, and the start message must be cut the same way again.
    """

    hint: int | None = None  # offsets-for-times answer, still to check against the first message read
    hint_ts: int | None = None  # the record timestamp the broker said ``hint`` has
    found_at: int | None = None  # offset of the message holding the start, once found
    skipped_messages: int = 0
    skipped_events: int = 0


class ClickStreamConsumer:
    """Batches of click events from ``config.topic``; see the module docstring for offsets.

    ``start_offsets``: partition -> next offset to read (a checkpoint's ``next_offsets``);
    partitions absent from it start where ``config.start_at`` says (default: the earliest
    offset). ``partitions``: required in ``static`` assignment (exactly these are read),
    not allowed in ``group`` mode.

    Thread-safety: `next_batch`, `commit`, `lag`, `assigned_partitions` and `close` may be
    called from any one caller thread; the Kafka client itself is only touched by the
    internal polling thread. Raises `BrokerUnavailableError` from the constructor if no
    broker answers within ``config.startup_timeout_s``.
    """

    def __init__(
        self,
        config: StreamConfig,
        schema: EventSchema,
        start_offsets: dict[int, int] | None = None,
        partitions: Sequence[int] | None = None,
        joined: bool = False,
    ) -> None:
        if config.assignment == "static" and not partitions:
            raise ValueError("static assignment needs the partitions to read")
        if config.assignment == "group" and partitions is not None:
            raise ValueError("partitions are assigned by the group in group mode; use assignment='static' to choose them")
        self.config = config
        self.schema = schema
        self.joined = joined  # impressions, clicks and watermarks (`stream.feedback_wire`), not only labelled events
        self._lock = threading.Lock()
        # Polling thread: next offset after the last message put in a batch (or the start offset).
        self._positions: dict[int, int] = dict(start_offsets or {})
        # Caller side (under _lock): positions after the batches returned by next_batch.
        self._delivered: dict[int, int] = dict(start_offsets or {})
        self._highwater: dict[int, int] = {}
        self._first_seen: dict[int, int] = {}
        # start_at (polling thread; the constructor in static mode): the start chosen for a
        # partition that had no position (None: earliest), reused when it is assigned again
        # before it has one; partitions still looking for their first event at start_at_ms.
        self._starts: dict[int, int | None] = {}
        self._searches: dict[int, _StartSearch] = {}
        # Caller side (under _lock): positions known without a batch (a start chosen by
        # start_at, messages dropped before it), for lag; events dropped per partition.
        self._floors: dict[int, int] = {}
        self._skipped: dict[int, int] = {}
        self._assigned: frozenset[int] = frozenset()
        self._commit_request: dict[int, int] = {}
        self._commit_not_before = 0.0
        self._events_per_message = 1.0
        self._pending = _Pending()
        self._ready: Batch | None = None
        self._queue: queue.Queue[Batch] = queue.Queue(maxsize=config.prefetch_batches)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._warned_large_message = False

        wait_for_broker(config.bootstrap_servers, config.startup_timeout_s, kafka_client_options(config))
        if config.client == "kafka-python" and config.check_crcs is None and not resolve_check_crcs(config):
            log.info("record CRC checks off: the native crc32c package is not installed (set check_crcs = true to force them)")
        self._client: ConsumerClient = open_client(config)
        #: The client library's own consumer object (tests reach into it; nothing else may).
        self._consumer = self._client.raw
        try:
            if config.assignment == "group":
                self._client.subscribe(self._on_assigned, self._on_revoked)
            else:
                chosen = sorted(set(partitions or ()))
                self._client.assign(self._start_positions(chosen))
                self._assigned = frozenset(chosen)
            self._thread = threading.Thread(target=self._run, name=f"click-stream-{config.topic}", daemon=True)
            self._thread.start()
        except BaseException:
            self._client.close(CONSUMER_CLOSE_TIMEOUT_MS)
            raise

    # ------------------------------------------------------------------ caller API

    def next_batch(self, timeout_s: float) -> Batch | None:
        """The next batch, or None if none is ready within ``timeout_s`` seconds.

        Raises `ConsumerFailedError` if the polling thread has died (never loses its error).
        """
        if self._closed:
            raise RuntimeError("consumer is closed")
        self._raise_if_failed()
        try:
            batch = self._queue.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            self._raise_if_failed()
            return None
        with self._lock:
            self._delivered.update(batch.next_offsets)
        return batch

    def commit(self, next_offsets: dict[int, int]) -> None:
        """Ask for ``next_offsets`` (partition -> next offset to read) to be committed to the group.

        Asynchronous and non-blocking: the polling thread commits it (later requests for a
        partition supersede earlier ones). Failures are logged and retried, never raised.
        """
        with self._lock:
            self._commit_request.update(next_offsets)

    def lag(self) -> dict[int, int]:
        """Per assigned partition: highwater minus the next offset handed out by `next_batch`.

        Only partitions whose highwater is known (after a fetch) appear. Highwater comes
        from fetch responses (`ConsumerClient.highwater`), which is right on Tansu where
        a ListOffsets query for the end (``end_offsets``) is not.
        """
        with self._lock:
            lag: dict[int, int] = {}
            for p in sorted(self._assigned):
                hw = self._highwater.get(p)
                if hw is None:
                    continue
                known = [o for o in (self._delivered.get(p), self._floors.get(p)) if o is not None]
                position = max(known) if known else self._first_seen.get(p, hw)
                lag[p] = max(0, hw - position)
            return lag

    @property
    def skipped_before_start(self) -> int:
        """Events dropped because they precede their partition's start (``start_at`` an event time)."""
        with self._lock:
            return sum(self._skipped.values())

    def assigned_partitions(self) -> list[int]:
        """Partitions currently assigned to this consumer (sorted)."""
        with self._lock:
            return sorted(self._assigned)

    def close(self, timeout_s: float = THREAD_JOIN_TIMEOUT_S) -> None:
        """Stop the polling thread (bounded wait); it runs pending commits and closes the Kafka client.

        Batches still queued are dropped: resume from the offsets of the last batch processed.
        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("click-stream polling thread did not stop within %.1f s; it will close the consumer when it returns", timeout_s)

    def __enter__(self) -> ClickStreamConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ConsumerFailedError(f"click-stream polling thread failed: {self._error!r}") from self._error

    # ------------------------------------------------------------------ polling thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._service_commit()
                if self._ready is not None:
                    try:
                        self._queue.put(self._ready, timeout=QUEUE_WAIT_S)
                    except queue.Full:
                        continue
                    self._ready = None
                    continue
                if self._batch_due():
                    self._ready = self._cut_batch()
                    continue
                self._poll()
        except BaseException as exc:  # surfaced to the caller by next_batch
            log.exception("click-stream polling thread failed")
            self._error = exc
        finally:
            try:
                self._service_commit(final=True)
            finally:
                self._client.close(CONSUMER_CLOSE_TIMEOUT_MS)

    def _poll(self) -> None:
        timeout_ms = POLL_TIMEOUT_MS
        if self._pending.messages:
            deadline = self._pending.arrived[0] + self.config.max_batch_ms / 1000.0
            timeout_ms = max(0, min(timeout_ms, int((deadline - time.monotonic()) * 1000) + 1))
        room = max(1, self.config.max_batch_events - self._pending.events)
        max_records = max(1, int(room / self._events_per_message))
        received = self._client.poll(timeout_ms, max_records)  # re-raises errors of rebalance callbacks
        if self._searches:
            received = self._find_starts(received)
        now = time.monotonic()
        events = 0
        first_seen: dict[int, int] = {}
        pending, limit = self._pending, self.config.max_message_bytes
        for message in received:
            first_seen.setdefault(message.partition, message.offset)
            if self.config.max_batch_span_ms:
                count, times = event_span(message, limit)  # one read: events and their event-time range
            else:
                count, times = count_events(message, limit), None
            pending.messages.append(message)
            pending.counts.append(count)
            pending.arrived.append(now)
            pending.times.append(times)
            pending.events += count
            events += count
        if received:
            self._events_per_message = 0.9 * self._events_per_message + 0.1 * (events / len(received))
        highwater = self._client.highwater()
        with self._lock:
            self._highwater.update(highwater)
            for p, offset in first_seen.items():
                self._first_seen.setdefault(p, offset)

    def _batch_due(self) -> bool:
        pending = self._pending
        if not pending.messages:
            return False
        if pending.events >= self.config.max_batch_events:
            return True
        if self.config.max_batch_span_ms:
            low = high = None
            for times in pending.times:  # due when some pending message would break the span
                fits, low, high = _fits_span(times, low, high, self.config.max_batch_span_ms)
                if not fits:
                    return True
        return time.monotonic() >= pending.arrived[0] + self.config.max_batch_ms / 1000.0

    def _cut_batch(self) -> Batch:
        """Take whole messages from the head of the pending queue, up to max_batch_events events
        (and max_batch_span_ms of event time, when set).

        A message is never split across batches (its offset is the unit of progress), so
        one Arrow message holding more than max_batch_events events is a batch on its own.
        """
        pending = self._pending
        limit, span_ms = self.config.max_batch_events, self.config.max_batch_span_ms
        taken: list[RawMessage] = []
        events = 0
        low = high = None
        while pending.messages and (not taken or events + pending.counts[0] <= limit):
            fits, new_low, new_high = _fits_span(pending.times[0], low, high, span_ms)
            if taken and not fits:
                break
            low, high = new_low, new_high
            count = pending.counts.popleft()
            pending.arrived.popleft()
            pending.times.popleft()
            taken.append(pending.messages.popleft())
            events += count
            pending.events -= count
        if len(taken) == 1 and events > limit and not self._warned_large_message:
            self._warned_large_message = True  # once: a producer doing this does it for every message
            log.warning("a message holds %d events > max_batch_events %d: such messages form batches on their own", events, limit)
        if self.joined:
            decoded = decode_feedback(taken, self.schema, self.config.max_message_bytes)
            table, clicks, max_ts, partitions = decoded.events, decoded.clicks, decoded.max_ts, decoded.event_partitions
        else:
            decoded = decode_messages(taken, self.schema, self.config.max_message_bytes)
            table, clicks, max_ts, partitions = decoded.table, None, {}, None
        first: dict[int, int] = {}
        for message in taken:
            first.setdefault(message.partition, message.offset)
            self._positions[message.partition] = message.offset + 1
        for p in first if self._searches else ():
            self._searches.pop(p, None)  # its start message is in a batch: positions cover the rest
        return Batch(
            table=table,
            next_offsets=dict(self._positions),
            rejects=decoded.rejects,
            events_by_partition=decoded.events_by_partition,
            first_offsets=first,
            messages=len(taken),
            closed_at=time.time(),
            clicks=clicks,
            max_ts=max_ts,
            event_partitions=partitions,
        )

    def _on_revoked(self, revoked: list[int]) -> None:
        if revoked:  # the first join and a close revoke nothing: not worth a line
            log.info("partitions revoked: %s", revoked)

    def _on_assigned(self, assigned: list[int]) -> Positions:
        """Where each newly assigned partition resumes: this consumer's own next offset, or its start.

        Runs inside the client's poll on the polling thread. Messages fetched but not
        batched are dropped: resuming at the own positions re-reads them.
        """
        self._pending.clear()
        with self._lock:
            self._assigned = frozenset(assigned)
        positions = self._start_positions(assigned)
        log.info(
            "partitions assigned: %s (resuming at %s)",
            assigned,
            {p: "earliest" if o is None else o for p, o in positions.items()},
        )
        return positions

    # ------------------------------------------------------------------ start_at

    def _start_positions(self, partitions: Iterable[int]) -> Positions:
        """Own position where there is one, else the start ``start_at`` chose (once per partition; None: earliest)."""
        partitions = sorted(partitions)
        new = [p for p in partitions if p not in self._positions and p not in self._starts]
        if new and self.config.start_at != "earliest":
            self._choose_starts(new)
        return {p: self._positions[p] if p in self._positions else self._starts.get(p) for p in partitions}

    def _choose_starts(self, partitions: list[int]) -> None:
        """Look up where ``start_at`` puts partitions that have no position (see the module docstring)."""
        start_ms = self.config.start_at_ms
        with OffsetLookup(self.config) as lookup:
            if start_ms is None:
                if self.config.start_at == "latest":
                    chosen: dict[int, int | None] = dict(lookup.ends(partitions))
                else:
                    chosen = dict(lookup.committed(partitions))
                for p, offset in chosen.items():
                    self._starts[p] = offset
                    if offset is not None:  # the position from now on: batches carry it, checkpoints keep it
                        self._positions[p] = offset
                with self._lock:
                    self._floors.update({p: o for p, o in chosen.items() if o is not None})
                log.info("start_at %s: partitions %s start at %s", self.config.start_at, partitions,
                         {p: "earliest" if o is None else o for p, o in chosen.items()})
                return
            beginning = lookup.beginning(partitions)
            answers = lookup.times(partitions, start_ms)
        hints = {}
        for p in partitions:
            search = _StartSearch()
            answer = answers.get(p)
            if answer is not None and answer[1] >= start_ms and answer[0] > beginning[p]:
                search.hint, search.hint_ts = answer
                hints[p] = answer[0]
            self._starts[p] = search.hint
            self._searches[p] = search
        log.info("start_at %s: partitions %s look for their first event with ts >= %d, from %s",
                 self.config.start_at, partitions, start_ms,
                 {p: f"offset {hints[p]} (offsets-for-times)" if p in hints else "earliest" for p in partitions})

    def _find_starts(self, received: list[RawMessage]) -> list[RawMessage]:
        """``received`` without what precedes each searching partition's first event at or after ``start_at_ms``.

        A dropped message advances its partition's position, so the next batch's
        ``next_offsets`` covers it; the message holding the start loses its rows before it
        (Arrow). A hint that fails its check re-seeks the partition to its earliest offset
        and drops the rest of its messages in ``received``.
        """
        start_ms = self.config.start_at_ms
        assert start_ms is not None
        limit = self.config.max_message_bytes
        kept: list[RawMessage] = []
        reseeked: set[int] = set()
        skipped: dict[int, int] = {}
        advanced: set[int] = set()
        for message in received:
            p = message.partition
            search = self._searches.get(p)
            if search is None or (search.found_at is not None and message.offset > search.found_at):
                kept.append(message)
                continue
            if p in reseeked:
                continue
            times = event_times(message, start_ms, limit)
            if search.hint is not None:
                hint, hint_ts = search.hint, search.hint_ts
                search.hint = search.hint_ts = None
                if not (message.offset == hint and message.timestamp_ms == hint_ts == times.max_ts):
                    log.info(
                        "partition %d: offsets-for-times answered offset %d with timestamp %s, but the record there "
                        "has timestamp %d and event time %s: not a lookup on event times; reading from the earliest offset",
                        p, hint, hint_ts, message.timestamp_ms, times.max_ts,
                    )
                    self._starts[p] = None
                    self._client.seek({p: None})
                    reseeked.add(p)
                    continue
            first = times.first_at_or_after
            if first is None:  # before the start: drop it, its offset still counts
                search.skipped_messages += 1
                search.skipped_events += times.events
                skipped[p] = skipped.get(p, 0) + times.events
                self._positions[p] = message.offset + 1
                advanced.add(p)
                continue
            if first:
                message = drop_leading_events(message, first)
            if search.found_at is None:  # not again when a rebalance makes it re-read the message
                search.found_at = message.offset
                search.skipped_events += first
                skipped[p] = skipped.get(p, 0) + first
                log.info(
                    "partition %d starts at offset %d%s, its first event with ts >= %d; %d events in %d messages skipped before it",
                    p, message.offset, f" (row {first})" if first else "", start_ms,
                    search.skipped_events, search.skipped_messages,
                )
            kept.append(message)
        if skipped:
            with self._lock:
                for p, events in skipped.items():
                    self._skipped[p] = self._skipped.get(p, 0) + events
                self._floors.update({p: self._positions[p] for p in advanced})
        return kept

    def _service_commit(self, final: bool = False) -> None:
        """Run the latest commit request, if any (polling thread only; never raises)."""
        if not final and time.monotonic() < self._commit_not_before:
            return
        with self._lock:
            request, self._commit_request = self._commit_request, {}
            assigned = self._assigned
        if self.config.assignment == "group":
            # Uncommittable now (not ours, or not yet assigned): keep them for later.
            keep = {p: o for p, o in request.items() if p not in assigned}
            request = {p: o for p, o in request.items() if p in assigned}
            if keep and not final:
                with self._lock:
                    self._commit_request = {**keep, **self._commit_request}
        if not request:
            return
        try:
            self._client.commit(request, COMMIT_TIMEOUT_MS)
        except Exception as exc:  # CommitFailedError after broker trouble, timeouts, ...: survive and retry
            log.warning("offset commit failed (%s: %s); will retry", type(exc).__name__, exc)
            if not final:
                with self._lock:
                    self._commit_request = {**request, **self._commit_request}
                self._commit_not_before = time.monotonic() + COMMIT_RETRY_S
