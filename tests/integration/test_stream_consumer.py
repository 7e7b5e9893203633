"""ClickStreamConsumer against a real (Tansu) broker: completeness, exact restarts, dead letters, faults."""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.broker import BrokerUnavailableError, EmbeddedBroker, create_topic, free_port
from stream.codec import ARROW_HEADERS, BAD_LABEL, INVALID_JSON, NON_FINITE, OVERSIZE, encode_arrow_batch
from stream.config import StreamConfig
from stream.consumer import Batch, ClickStreamConsumer
from stream.dead_letter import DeadLetterWriter
from stream.replay import partition_for_key, replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import SYNTHETIC_EVENT_SCHEMA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

PARTITIONS = 4
EVENTS = 20_000
SCHEMA = SYNTHETIC_EVENT_SCHEMA
MakeConfig = Callable[..., StreamConfig]


@pytest.fixture(scope="module")
def clicks() -> pa.Table:
    return generate_synthetic_log(SyntheticLogConfig(events=EVENTS, seed=5, users=500, initial_items=300))


def consume(consumer: ClickStreamConsumer, events: int, timeout_s: float = 30.0, batches: int | None = None) -> list[Batch]:
    """Batches until ``events`` valid events (or ``batches`` batches) arrived; bounded by ``timeout_s``."""
    out: list[Batch] = []
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < events and (batches is None or len(out) < batches):
        assert time.monotonic() < deadline, f"only {seen} of {events} events within {timeout_s} s"
        batch = consumer.next_batch(timeout_s=0.5)
        if batch is not None:
            out.append(batch)
            seen += batch.events
    return out


def event_ids(batches: list[Batch]) -> list[str]:
    return [e for b in batches for e in b.table.column("event_id").to_pylist()]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def merged_offsets(batches: list[Batch]) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for batch in batches:
        offsets.update(batch.next_offsets)
    return offsets


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_replayed_log_is_consumed_exactly(broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, fmt: str) -> None:
    config = stream_config(broker, topic=f"clicks-{fmt}", max_batch_events=1024)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    summary = replay(clicks, config, fmt=fmt, arrow_batch_events=512, progress=False)
    assert summary.events == EVENTS

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        batches = consume(consumer, EVENTS)
        ids = event_ids(batches)
        assert collections.Counter(ids) == collections.Counter(clicks.column("event_id").to_pylist())
        assert all(b.events + len(b.rejects) <= config.max_batch_events for b in batches)
        assert all(b.table.schema == SCHEMA.arrow_schema() and not b.rejects for b in batches)
        assert consumer.assigned_partitions() == list(range(PARTITIONS))
        wait_for(lambda: consumer.lag() == {p: 0 for p in range(PARTITIONS)}, 10, "lag 0 on every partition")

    offsets = batches[-1].next_offsets  # cumulative: the last batch holds every partition's position
    assert offsets == merged_offsets(batches)
    assert sum(offsets.values()) == summary.messages
    if fmt == "json":  # one message per event, partitioned by murmur2(str(user_id)): highwater per partition
        expected = collections.Counter(partition_for_key(str(u).encode(), PARTITIONS) for u in clicks.column("user_id").to_pylist())
        assert offsets == dict(expected)
    # Within a partition, events keep event-time order (replay sorted them; the consumer keeps message order).
    for batch in batches:
        assert batch.first_offsets and all(batch.first_offsets[p] < batch.next_offsets[p] for p in batch.first_offsets)


def test_restart_from_recorded_offsets_reads_each_event_once(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table
) -> None:
    config = stream_config(broker, topic="clicks-restart", max_batch_events=700)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt="json", progress=False)

    with ClickStreamConsumer(config, SCHEMA) as first:
        first_run = consume(first, EVENTS, batches=6)
        checkpoint = first_run[-1].next_offsets
        first.commit(checkpoint)
    assert 0 < sum(checkpoint.values()) < EVENTS

    second_config = stream_config(broker, topic="clicks-restart", group_id="another-trainer", assignment="static")
    with ClickStreamConsumer(second_config, SCHEMA, start_offsets=checkpoint, partitions=range(PARTITIONS)) as second:
        second_run = consume(second, EVENTS - sum(b.events for b in first_run))
        ids = event_ids(first_run) + event_ids(second_run)
        assert len(ids) == len(set(ids)) == EVENTS
        assert set(ids) == set(clicks.column("event_id").to_pylist())
        assert second.next_batch(timeout_s=0.5) is None  # nothing beyond the log


def test_malformed_messages_go_to_the_dead_letter_topic(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table
) -> None:
    config = stream_config(broker, topic="clicks-dirty", max_message_bytes=8192, max_batch_ms=50)
    create_topic(broker.bootstrap, config.topic, 2)
    create_topic(broker.bootstrap, config.dead_letter_topic, 1)
    good = clicks.slice(0, 300).to_pylist()
    bad_row = dict(good[0], event_id="bad-arrow-row", label=7)
    arrow_with_bad_row = encode_arrow_batch(pa.Table.from_pylist([*good[1:4], bad_row], schema=clicks.schema))
    planted = {  # (partition, value) -> reason
        (0, b"{this is not json"): INVALID_JSON,
        (1, json.dumps(dict(good[5], label=2)).encode()): BAD_LABEL,
        (0, json.dumps(dict(good[6], item={**good[6]["item"], "price": float("nan")})).encode()): NON_FINITE,
        (1, b'{"padding": "' + b"x" * 9000 + b'"}'): OVERSIZE,
    }
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    sent: dict[tuple[int, int], str] = {}
    plain = [json.dumps(row).encode() for row in good[7:]]
    for i, value in enumerate(plain):
        producer.send(config.topic, value=value, partition=i % 2)
        if i % 50 == 10 and planted:
            (partition, bad), reason = planted.popitem()
            metadata = producer.send(config.topic, value=bad, partition=partition).get(timeout=10)
            sent[(metadata.partition, metadata.offset)] = reason
    metadata = producer.send(config.topic, value=arrow_with_bad_row, partition=1, headers=ARROW_HEADERS).get(timeout=10)
    sent[(metadata.partition, metadata.offset)] = BAD_LABEL
    producer.flush()
    producer.close()
    assert not planted

    with ClickStreamConsumer(config, SCHEMA) as consumer, DeadLetterWriter(config) as dead_letters:
        batches = consume(consumer, len(plain) + 3)
        for batch in batches:
            dead_letters.write(batch.rejects, config.topic)
        dead_letters.flush()
        assert dead_letters.failed == 0
        assert dead_letters.counts == collections.Counter(sent.values())
    assert sorted(event_ids(batches)) == sorted([r["event_id"] for r in good[7:]] + [r["event_id"] for r in good[1:4]])

    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    reader.assign([TopicPartition(config.dead_letter_topic, 0)])
    reader.seek_to_beginning()
    records = []
    deadline = time.monotonic() + 10
    while len(records) < len(sent) and time.monotonic() < deadline:
        for chunk in reader.poll(timeout_ms=500).values():
            records.extend(chunk)
    reader.close()
    got = {}
    for record in records:
        headers = dict(record.headers)
        assert headers["source-topic"] == config.topic.encode()
        location = (int(headers["source-partition"]), int(headers["source-offset"]))
        assert record.key == f"{location[0]}:{location[1]}".encode()
        assert headers["detail"]
        got[location] = headers["reason"].decode()
        if location == (metadata.partition, metadata.offset):
            assert json.loads(record.value)["event_id"] == "bad-arrow-row"  # the row, not the whole message
    assert got == sent


def test_broker_pause_loses_and_repeats_nothing(broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table) -> None:
    config = stream_config(broker, topic="clicks-pause", max_batch_events=400, prefetch_batches=2)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt="json", progress=False)

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        batches = consume(consumer, EVENTS, batches=5)
        consumer.commit(batches[-1].next_offsets)
        broker.pause()
        paused_at = time.monotonic()
        try:
            while time.monotonic() - paused_at < 5.0:  # keep training on what was prefetched
                batch = consumer.next_batch(timeout_s=0.2)
                if batch is not None:
                    batches.append(batch)
                    consumer.commit(batch.next_offsets)
        finally:
            broker.resume()
        while sum(b.events for b in batches) < EVENTS:
            more = consume(consumer, 1, timeout_s=30)
            batches.extend(more)
            consumer.commit(more[-1].next_offsets)
        ids = event_ids(batches)
        assert len(ids) == len(set(ids)) == EVENTS
        assert consumer.next_batch(timeout_s=0.5) is None
        wait_for(lambda: consumer.lag() == {p: 0 for p in range(PARTITIONS)}, 15, "lag 0 after the pause")


def test_rebalance_mid_stream_resumes_where_batches_left_off(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, caplog: pytest.LogCaptureFixture
) -> None:
    """A group rebalance (here forced) must re-seek to the consumer's own positions, dropping unbatched messages."""
    config = stream_config(broker, topic="clicks-rebalance", max_batch_events=300, prefetch_batches=2)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks.slice(0, 6000), config, fmt="json", progress=False)
    caplog.set_level(logging.INFO, logger="stream.consumer")

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        batches = consume(consumer, 6000, batches=4)
        # Test hook: kafka-python rejoins the group on the polling thread's next poll (a flag, safe to set).
        consumer._consumer._coordinator.request_rejoin()
        batches += consume(consumer, 6000 - sum(b.events for b in batches))
        ids = event_ids(batches)
        assert len(ids) == len(set(ids)) == 6000
    assignments = [r for r in caplog.records if r.getMessage().startswith("partitions assigned")]
    assert len(assignments) >= 2, "the forced rebalance did not happen"


def test_unreachable_bootstrap_fails_fast_with_one_line(stream_config: MakeConfig) -> None:
    closed = f"127.0.0.1:{free_port()}"
    config = StreamConfig(bootstrap_servers=(closed,), startup_timeout_s=1.5, session_timeout_ms=2000, heartbeat_interval_ms=500,
                          client="kafka-python")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as failure:
        ClickStreamConsumer(config, SCHEMA)
    elapsed = time.monotonic() - started
    assert elapsed < config.startup_timeout_s + 2.0
    message = str(failure.value)
    assert "\n" not in message and closed in message and "1.5" in message


def test_polling_thread_errors_reach_the_caller(broker: EmbeddedBroker, stream_config: MakeConfig) -> None:
    config = stream_config(broker, topic="clicks-error", assignment="static")
    create_topic(broker.bootstrap, config.topic, 1)
    consumer = ClickStreamConsumer(config, SCHEMA, partitions=[0])
    try:
        boom = RuntimeError("decoder exploded")

        def fail() -> None:
            raise boom

        consumer._poll = fail  # type: ignore[method-assign]  # inject a failure inside the polling thread
        with pytest.raises(Exception, match="decoder exploded"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                consumer.next_batch(timeout_s=0.2)
    finally:
        consumer.close()


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_batches_close_at_an_event_time_span(broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table,
                                             fmt: str) -> None:
    """[stream] max_batch_span_ms: a replay at full speed is cut as live traffic would be, by event time."""
    ts = clicks.column("ts").to_numpy()
    span_ms = int((ts.max() - ts.min()) // 60)  # ~60 batches over the log, far fewer events each than the count limit
    config = stream_config(broker, topic=f"clicks-span-{fmt}", max_batch_events=100_000, max_batch_ms=2_000,
                           max_batch_span_ms=span_ms)
    create_topic(broker.bootstrap, config.topic, 1)  # one partition: messages in event-time order
    replay(clicks, config, fmt=fmt, arrow_batch_events=16, progress=False)
    with ClickStreamConsumer(config, SCHEMA) as consumer:
        batches = consume(consumer, EVENTS)
    assert sorted(event_ids(batches)) == sorted(clicks.column("event_id").to_pylist())
    spans = [int(b.table.column("ts").to_numpy().max() - b.table.column("ts").to_numpy().min()) for b in batches]
    assert max(spans) <= span_ms
    assert len(batches) >= 55  # cut by event time, not by the 100k-event limit
    # Each batch was closed because the next message would have broken the span (all but the last).
    firsts = [int(b.table.column("ts").to_numpy().min()) for b in batches]
    lasts_next = [int(nxt.table.column("ts").to_numpy()[: 16 if fmt == "arrow" else 1].max()) for nxt in batches[1:]]
    assert all(after - first > span_ms for first, after in zip(firsts, lasts_next))
