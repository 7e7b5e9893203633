"""The Kafka client libraries behind `ClickStreamConsumer`, reduced to what it needs.

`ClickStreamConsumer` keeps batching, offsets and commits-for-lag in one place; a
`ConsumerClient` only fetches `RawMessage`s, positions partitions, reports highwater
marks and commits. Two implementations, chosen by ``[stream] client``:

- `KafkaPythonClient` (kafka-python): pure Python. Its record parsing costs ~20 us a
  message in the polling thread, CPU that the training step misses on a small machine
  when every message is one JSON event.
- `ConfluentClient` (confluent-kafka, librdkafka): fetching and record parsing happen in
  librdkafka's own C threads; the polling thread only wraps messages.

Both are used from one thread only (the polling thread), and both deliver rebalances
eagerly (all partitions revoked, then the new assignment) from inside `poll`: the
``on_assigned`` callback returns where each assigned partition resumes (None: at the
earliest offset) and the client positions it there before any message is fetched.
An error raised by a callback is re-raised by the next `poll`.

`OffsetLookup` answers the start questions of ``[stream] start_at`` (a partition's
beginning, its exact end, the group's committed offset, offsets for a time) the same way
for both clients: it is a short-lived kafka-python consumer that never joins the group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, NoBrokersAvailable
from kafka.structs import OffsetAndMetadata

from stream.broker import BrokerUnavailableError
from stream.codec import RawMessage
from stream.config import StreamConfig, kafka_client_options, resolve_check_crcs

log = logging.getLogger(__name__)

CLIENT_ID = "inttower-stream"

#: partition -> next offset to read; None: the partition's earliest offset.
Positions = dict[int, int | None]
OnAssigned = Callable[[list[int]], Positions]
OnRevoked = Callable[[list[int]], None]


class ConsumerClient(Protocol):
    """What `ClickStreamConsumer`'s polling thread asks of a Kafka client (one thread only)."""

    #: The library's own consumer object (for tests and debugging).
    raw: Any

    def assign(self, positions: Positions) -> None:
        """Read exactly these partitions of the topic, starting at ``positions``."""

    def subscribe(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        """Join the consumer group; the callbacks run inside `poll` on rebalances."""

    def seek(self, positions: Positions) -> None:
        """Move assigned partitions to ``positions``; messages already fetched from them are not delivered."""

    def poll(self, timeout_ms: int, max_records: int) -> list[RawMessage]:
        """Up to ``max_records`` messages in fetch order (per partition: offset order)."""

    def highwater(self) -> dict[int, int]:
        """Per assigned partition, the highwater mark of the last fetch response (if any yet)."""

    def commit(self, offsets: dict[int, int], timeout_ms: int) -> None:
        """Commit partition -> next offset to the group synchronously; raises on failure."""

    def close(self, timeout_ms: int) -> None:
        """Leave the group and release the connections (no offsets committed)."""


def open_client(config: StreamConfig) -> ConsumerClient:
    """The client named by ``config.client``; `BrokerUnavailableError` if it cannot connect."""
    if config.client == "confluent":
        return ConfluentClient(config)
    return KafkaPythonClient(config)


# --------------------------------------------------------------------------- kafka-python


class _Listener(ConsumerRebalanceListener):
    """kafka-python rebalance callbacks -> the client (kafka-python only logs listener errors)."""

    def __init__(self, client: KafkaPythonClient, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        self._client, self._on_assigned, self._on_revoked = client, on_assigned, on_revoked

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            self._on_revoked(sorted(tp.partition for tp in revoked))
        except BaseException as exc:
            self._client.error = exc

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            self._client.seek(self._on_assigned(sorted(tp.partition for tp in assigned)))
        except BaseException as exc:
            self._client.error = exc


class KafkaPythonClient:
    """`ConsumerClient` on kafka-python's KafkaConsumer (not thread-safe: one thread)."""

    def __init__(self, config: StreamConfig) -> None:
        self._topic = config.topic
        self.error: BaseException | None = None
        try:
            self.raw = KafkaConsumer(
                client_id=CLIENT_ID,
                group_id=config.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                max_poll_records=config.max_batch_events,
                max_partition_fetch_bytes=config.max_partition_fetch_bytes,
                fetch_max_bytes=config.fetch_max_bytes,
                check_crcs=resolve_check_crcs(config),
                **kafka_client_options(config),
            )
        except KafkaError as exc:  # NoBrokersAvailable: the broker went away after the probe
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {','.join(config.bootstrap_servers)} ({type(exc).__name__})"
            ) from None

    def assign(self, positions: Positions) -> None:
        self.raw.assign([TopicPartition(self._topic, p) for p in sorted(positions)])
        self.seek(positions)

    def subscribe(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        self.raw.subscribe(topics=[self._topic], listener=_Listener(self, on_assigned, on_revoked))

    def seek(self, positions: Positions) -> None:
        """Seek every partition; earliest offsets are looked up in one request and sought explicitly.

        Left to kafka-python's lazy reset, partitions get positions one after another and
        the first one's whole backlog is fetched before the others start, so a backlog
        would not be consumed in event-time order across partitions.
        """
        unknown = [TopicPartition(self._topic, p) for p, offset in positions.items() if offset is None]
        earliest = self.raw.beginning_offsets(unknown) if unknown else {}
        for p, offset in sorted(positions.items()):
            tp = TopicPartition(self._topic, p)
            self.raw.seek(tp, earliest[tp] if offset is None else offset)

    def poll(self, timeout_ms: int, max_records: int) -> list[RawMessage]:
        records = self.raw.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self.error is not None:
            raise self.error
        return [
            RawMessage(record.partition, record.offset, record.value or b"", list(record.headers or ()), record.timestamp)
            for batch in records.values()
            for record in batch
        ]

    def highwater(self) -> dict[int, int]:
        marks = {}
        for tp in self.raw.assignment():
            hw = self.raw.highwater(tp)
            if hw is not None:
                marks[tp.partition] = hw
        return marks

    def commit(self, offsets: dict[int, int], timeout_ms: int) -> None:
        request = {TopicPartition(self._topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        self.raw.commit(offsets=request, timeout_ms=timeout_ms)

    def close(self, timeout_ms: int) -> None:
        self.raw.close(autocommit=False, timeout_ms=timeout_ms)


# --------------------------------------------------------------------------- confluent-kafka

#: StreamConfig security settings -> librdkafka property names (set only when not None).
_LIBRDKAFKA_SECURITY = {
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
}


def librdkafka_options(config: StreamConfig) -> dict[str, Any]:
    """librdkafka properties equivalent to the kafka-python consumer settings.

    ``message.max.bytes`` is lowered to ``fetch_max_bytes`` because librdkafka raises
    ``fetch.max.bytes`` to at least it (1 MB by default), which would undo the small
    fetches that interleave partitions on Tansu. ``check_crcs`` None means on: librdkafka
    computes CRC-32C in C. ``read_uncommitted`` matches kafka-python (highwater = the end
    of the log, not the last stable offset).
    """
    options: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.bootstrap_servers),
        "client.id": CLIENT_ID,
        "group.id": config.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": config.heartbeat_interval_ms,
        "max.partition.fetch.bytes": config.max_partition_fetch_bytes,
        "fetch.max.bytes": config.fetch_max_bytes,
        "message.max.bytes": max(1000, config.fetch_max_bytes),
        "queued.max.messages.kbytes": config.client_queue_kbytes,
        "socket.timeout.ms": config.request_timeout_ms,
        "check.crcs": config.check_crcs is not False,
        "security.protocol": config.security_protocol.lower(),
    }
    for name, prop in _LIBRDKAFKA_SECURITY.items():
        value = getattr(config, name)
        if value is not None:
            options[prop] = value
    return options


class ConfluentClient:
    """`ConsumerClient` on confluent-kafka's Consumer (librdkafka); used from one thread.

    Highwater marks are librdkafka's cached values from fetch responses
    (``get_watermark_offsets(cached=True)``): a ListOffsets query (cached=False) returns
    too-low ends on Tansu, like kafka-python's ``end_offsets``.
    """

    def __init__(self, config: StreamConfig) -> None:
        try:
            import confluent_kafka
        except ImportError:
            raise ImportError("[stream] client = \"confluent\" needs the confluent-kafka package (pip install confluent-kafka)") from None
        self._ck = confluent_kafka
        self._topic = config.topic
        self._assigned: list[int] = []
        self._lookup_timeout_s = config.request_timeout_ms / 1000.0
        self._on_assigned: OnAssigned | None = None
        self._on_revoked: OnRevoked | None = None
        self.error: BaseException | None = None
        options = {**librdkafka_options(config), "error_cb": self._log_error}
        try:
            self.raw = confluent_kafka.Consumer(options, logger=log)
        except confluent_kafka.KafkaException as exc:
            raise BrokerUnavailableError(f"cannot create a Kafka consumer for {options['bootstrap.servers']}: {exc}") from None

    def _partitions(self, positions: Positions) -> list[Any]:
        """Partitions with absolute start offsets; earliest ones are looked up now, not left to librdkafka.

        With OFFSET_BEGINNING librdkafka resolves each partition on its own and fetches
        the first one resolved alone for a while, so a backlog would not be consumed in
        event-time order across partitions. (The low watermark query is right on Tansu.)
        """
        out = []
        for p, offset in sorted(positions.items()):
            tp = self._ck.TopicPartition(self._topic, p)
            if offset is None:
                try:
                    offset = self.raw.get_watermark_offsets(tp, timeout=self._lookup_timeout_s, cached=False)[0]
                except self._ck.KafkaException as exc:  # same start, only less interleaved
                    log.info("earliest offset of partition %d not found (%s); librdkafka resolves it", p, exc)
                    offset = self._ck.OFFSET_BEGINNING
            out.append(self._ck.TopicPartition(self._topic, p, offset))
        return out

    def assign(self, positions: Positions) -> None:
        self.raw.assign(self._partitions(positions))
        self._assigned = sorted(positions)

    def seek(self, positions: Positions) -> None:
        """librdkafka drops what it prefetched for a partition it seeks (a fetch version barrier)."""
        for tp in self._partitions(positions):
            self.raw.seek(tp)

    def subscribe(self, on_assigned: OnAssigned, on_revoked: OnRevoked) -> None:
        self._on_assigned, self._on_revoked = on_assigned, on_revoked
        self.raw.subscribe([self._topic], on_assign=self._assign_cb, on_revoke=self._revoke_cb, on_lost=self._revoke_cb)

    def _assign_cb(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            assert self._on_assigned is not None
            positions = self._on_assigned(sorted(tp.partition for tp in partitions))
            # Assigning here (not leaving it to the library) is what applies the offsets.
            consumer.assign(self._partitions(positions))
            self._assigned = sorted(positions)
        except BaseException as exc:
            self.error = exc

    def _revoke_cb(self, consumer: Any, partitions: list[Any]) -> None:
        try:
            self._assigned = []
            assert self._on_revoked is not None
            self._on_revoked(sorted(tp.partition for tp in partitions))
            consumer.unassign()
        except BaseException as exc:
            self.error = exc

    def _log_error(self, error: Any) -> None:
        if error.fatal():
            self.error = self._ck.KafkaException(error)
        log.warning("kafka client: %s", error.str())

    def poll(self, timeout_ms: int, max_records: int) -> list[RawMessage]:
        messages = self.raw.consume(num_messages=max_records, timeout=timeout_ms / 1000.0)
        if self.error is not None:
            raise self.error
        out = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise self._ck.KafkaException(error)
                log.warning("kafka client: %s", error.str())
                continue
            out.append(RawMessage(m.partition(), m.offset(), m.value() or b"", m.headers() or [], m.timestamp()[1]))
        return out

    def highwater(self) -> dict[int, int]:
        marks = {}
        for p in self._assigned:
            _, high = self.raw.get_watermark_offsets(self._ck.TopicPartition(self._topic, p), cached=True)
            if high >= 0:
                marks[p] = high
        return marks

    def commit(self, offsets: dict[int, int], timeout_ms: int) -> None:
        """Synchronous; librdkafka bounds it by ``socket.timeout.ms`` (request_timeout_ms), not ``timeout_ms``."""
        request = [self._ck.TopicPartition(self._topic, p, o) for p, o in sorted(offsets.items())]
        for tp in self.raw.commit(offsets=request, asynchronous=False) or ():
            if tp.error is not None:
                raise self._ck.KafkaException(tp.error)

    def close(self, timeout_ms: int) -> None:
        self.raw.close()


# --------------------------------------------------------------------------- start offsets

#: Probe fetches of `OffsetLookup.ends`: small, and answered at once at the end of a partition.
_PROBE_FETCH_BYTES = 1024
_PROBE_MAX_WAIT_MS = 10
_PROBE_POLL_MS = 50


class OffsetLookup:
    """Start offsets for ``[stream] start_at``, looked up with a kafka-python consumer of its own.

    Used by `ClickStreamConsumer` for partitions without a position, on either client, so
    both start alike. It never joins the group (it only reads the group's committed
    offsets), and lives for one assignment: open, ask, close. Lookups are bounded by
    ``request_timeout_ms``; a failure raises (the consumer fails; restart it).

    Answers on Tansu (the embedded broker), measured: ``beginning`` and the group's
    ``committed`` offsets are right. A ListOffsets query for the end (kafka-python
    ``end_offsets``/``seek_to_end``, librdkafka ``OFFSET_END``) answers the last record
    batch's base offset + 1, so `ends` takes that as a lower bound and reads the
    highwater mark of one fetch from there, which is right on both brokers. Offsets for a
    time are looked up on the batches' *append* (wall-clock) times, not the records'
    CreateTime timestamps, with the append time as the answer's timestamp, and a time
    after the last append answers offset 0 with timestamp -1; `ClickStreamConsumer`
    checks an answer against the record it points at before trusting it.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._topic = config.topic
        self._timeout_s = config.request_timeout_ms / 1000.0
        try:
            self.raw = KafkaConsumer(
                client_id=f"{CLIENT_ID}-lookup",
                group_id=config.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=config.session_timeout_ms,  # never joins; kafka-python checks them
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                fetch_max_wait_ms=_PROBE_MAX_WAIT_MS,
                max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
                fetch_max_bytes=_PROBE_FETCH_BYTES,
                check_crcs=False,
                **kafka_client_options(config),
            )
        except NoBrokersAvailable as exc:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {','.join(config.bootstrap_servers)} ({type(exc).__name__})"
            ) from None

    def __enter__(self) -> OffsetLookup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tps(self, partitions: Sequence[int]) -> list[TopicPartition]:
        return [TopicPartition(self._topic, p) for p in partitions]

    def beginning(self, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's earliest offset."""
        return {tp.partition: o for tp, o in self.raw.beginning_offsets(self._tps(partitions)).items()}

    def committed(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """The group's committed offset of each partition (None: nothing committed)."""
        timeout_ms = int(self._timeout_s * 1000)
        return {tp.partition: self.raw.committed(tp, timeout_ms=timeout_ms) for tp in self._tps(partitions)}

    def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's end (the offset the next record produced gets): the highwater of a fetch."""
        tps = self._tps(partitions)
        if not tps:
            return {}
        lower = self.raw.end_offsets(tps)  # exact on Kafka; on Tansu at most the end
        self.raw.assign(tps)
        for tp in tps:
            self.raw.seek(tp, lower[tp])
        deadline = time.monotonic() + self._timeout_s
        while True:
            self.raw.poll(timeout_ms=_PROBE_POLL_MS, max_records=1)
            marks = {tp: self.raw.highwater(tp) for tp in tps}
            if all(mark is not None for mark in marks.values()):
                return {tp.partition: max(int(mark), lower[tp]) for tp, mark in marks.items()}
            if time.monotonic() > deadline:
                missing = sorted(tp.partition for tp, mark in marks.items() if mark is None)
                raise KafkaTimeoutError(f"no fetch response for partitions {missing} of {self._topic} within {self._timeout_s:.0f} s")

    def times(self, partitions: Sequence[int], timestamp_ms: int) -> dict[int, tuple[int, int] | None]:
        """Kafka's offsets-for-times: per partition (offset, timestamp of the record found), or None."""
        found = self.raw.offsets_for_times({tp: timestamp_ms for tp in self._tps(partitions)})
        return {tp.partition: None if answer is None else (answer.offset, answer.timestamp) for tp, answer in found.items()}

    def close(self) -> None:
        self.raw.close(autocommit=False, timeout_ms=int(self._timeout_s * 1000))
