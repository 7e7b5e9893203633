"""``[stream] start_at`` against the embedded broker (Tansu), on both Kafka clients.

Expected starts are computed from the log itself (read back message by message): a
partition started at event time T yields its events from its first one with ts >= T (in
offset order, rows of an Arrow message in row order) to the end, and every batch's
``next_offsets`` covers exactly the messages whose kept events it (and the batches before
it) hold.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from stream.broker import EmbeddedBroker, create_topic
from stream.codec import ARROW_HEADERS, JSON_HEADERS, encode_arrow_batch, encode_json_event
from stream.config import StreamConfig
from stream.consumer import Batch, ClickStreamConsumer
from stream.consumer_clients import OffsetLookup
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import SYNTHETIC_EVENT_SCHEMA as SCHEMA

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PARTITIONS = 3
EVENTS = 600
CLIENTS = ("kafka-python", "confluent")
FORMATS = ("json", "arrow")
ARROW_ROWS = 25  # events per Arrow message: several messages per partition, starts inside them
MakeConfig = Callable[..., StreamConfig]


@pytest.fixture(scope="module")
def clicks() -> pa.Table:
    return generate_synthetic_log(SyntheticLogConfig(events=EVENTS, seed=11, users=60, initial_items=50))


# --------------------------------------------------------------------------- the log, read back


@dataclass
class LogMessage:
    offset: int
    timestamp_ms: int
    events: list[tuple[str, int]]  # (event_id, ts) in row order


@dataclass
class Expected:
    """What a partition started at an event time yields, from the log."""

    ids: set[str] = field(default_factory=set)
    skipped: int = 0  # events before the start
    start_offset: int | None = None
    start_row: int = 0
    kept_by_offset: dict[int, set[str]] = field(default_factory=dict)


def read_log(bootstrap: str, topic: str, timeout_s: float = 15.0) -> dict[int, list[LogMessage]]:
    """Every message of ``topic``, per partition in offset order, up to the highwater of each."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    reader.assign(tps)
    reader.seek_to_beginning()
    log: dict[int, list[LogMessage]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            for records in reader.poll(timeout_ms=200).values():
                for r in records:
                    log[r.partition].append(LogMessage(r.offset, r.timestamp, message_events(r.value)))
            marks = {tp.partition: reader.highwater(tp) for tp in tps}
            if all(m is not None and (m == 0 or (log[p] and log[p][-1].offset + 1 == m)) for p, m in marks.items()):
                return log
            assert time.monotonic() < deadline, f"could not read {topic} to its end: {marks}"
    finally:
        reader.close()


def message_events(value: bytes) -> list[tuple[str, int]]:
    if value[:4] == b"\xff\xff\xff\xff":
        table = pa.ipc.open_stream(value).read_all()
        return list(zip(table.column("event_id").to_pylist(), table.column("ts").to_pylist()))
    event = json.loads(value)
    return [(event["event_id"], event["ts"])]


def expected_from(log: dict[int, list[LogMessage]], start_ms: int, start_offsets: dict[int, int] | None = None) -> dict[int, Expected]:
    """Per partition: the events from its first one with ts >= start_ms (or from a start offset)."""
    out: dict[int, Expected] = {}
    for p, messages in log.items():
        e = Expected()
        started = False
        for m in messages:
            kept = set()
            for row, (event_id, ts) in enumerate(m.events):
                if not started:
                    from_offset = start_offsets is not None and p in start_offsets
                    started = m.offset >= start_offsets[p] if from_offset else ts >= start_ms
                    if started:
                        e.start_offset, e.start_row = m.offset, row
                    else:
                        e.skipped += 0 if from_offset else 1
                if started:
                    kept.add(event_id)
            e.kept_by_offset[m.offset] = kept
            e.ids |= kept
        out[p] = e
    return out


def ends(log: dict[int, list[LogMessage]]) -> dict[int, int]:
    return {p: messages[-1].offset + 1 if messages else 0 for p, messages in log.items()}


# --------------------------------------------------------------------------- consuming


def consume_ids(consumer: ClickStreamConsumer, expected: set[str], timeout_s: float = 30.0) -> list[Batch]:
    """Batches until every expected event arrived (then 1 s more: nothing else may come)."""
    batches: list[Batch] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not expected <= seen:
        assert time.monotonic() < deadline, f"{len(expected - seen)} of {len(expected)} expected events missing after {timeout_s} s"
        batch = consumer.next_batch(timeout_s=0.5)
        if batch is not None:
            batches.append(batch)
            seen.update(batch.table.column("event_id").to_pylist())
    extra = consumer.next_batch(timeout_s=1.0)
    assert extra is None or extra.events == 0, f"unexpected events: {extra.table.column('event_id').to_pylist()[:5]}"
    return batches


def ids_of(batches: list[Batch]) -> list[str]:
    return [e for b in batches for e in b.table.column("event_id").to_pylist()]


def assert_offsets_exact(batches: list[Batch], expected: dict[int, Expected], beginning: dict[int, int]) -> dict[int, int]:
    """Each batch holds exactly the kept events of the messages its ``next_offsets`` moved over."""
    partition_of = {i: p for p, e in expected.items() for ids in e.kept_by_offset.values() for i in ids}
    previous = dict(beginning)
    for batch in batches:
        got = collections.defaultdict(set)
        for event_id in batch.table.column("event_id").to_pylist():
            got[partition_of[event_id]].add(event_id)
        for p, e in expected.items():
            after = batch.next_offsets.get(p, previous[p])
            assert after >= previous[p]
            covered = set().union(*(ids for o, ids in e.kept_by_offset.items() if previous[p] <= o < after))
            assert got[p] == covered, f"partition {p}: batch events differ from offsets [{previous[p]}, {after})"
            previous[p] = after
    return previous


def time_at(clicks: pa.Table, fraction: float) -> int:
    ts = np.sort(clicks.column("ts").to_numpy())
    return int(ts[int(len(ts) * fraction)]) + 1  # +1: between two events unless times repeat


def start_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stream.consumer" and " starts at offset " in r.getMessage()]


# --------------------------------------------------------------------------- event time


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_event_time_start_is_exact_on_every_partition(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, caplog: pytest.LogCaptureFixture, fmt: str, client: str,
) -> None:
    """Group mode, a replayed log: each partition starts at its first event with ts >= T, skips counted, offsets exact."""
    start_ms = time_at(clicks, 0.4)
    config = stream_config(broker, topic=f"at-{fmt}", client=client, max_batch_events=60, start_at=start_ms)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt=fmt, arrow_batch_events=ARROW_ROWS, progress=False, stamp_event_times=True)
    log = read_log(broker.bootstrap, config.topic)
    expected = expected_from(log, start_ms)
    assert all(0 < e.skipped and e.ids for e in expected.values())
    if fmt == "arrow":
        assert any(e.start_row > 0 for e in expected.values()), "T should fall inside an Arrow message somewhere"
    caplog.set_level(logging.INFO, logger="stream.consumer")

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        want = set().union(*(e.ids for e in expected.values()))
        batches = consume_ids(consumer, want)
        ids = ids_of(batches)
        assert len(ids) == len(set(ids)) and set(ids) == want
        assert consumer.skipped_before_start == sum(e.skipped for e in expected.values())
        assert assert_offsets_exact(batches, expected, {p: 0 for p in range(PARTITIONS)}) == ends(log)
        assert batches[-1].next_offsets == ends(log)
        assert all(not b.rejects for b in batches)
        wait_for_lag_zero(consumer)
    lines = start_lines(caplog)
    assert len(lines) == PARTITIONS
    for p, e in expected.items():
        assert any(line.startswith(f"partition {p} starts at offset {e.start_offset}") and f"{e.skipped} events" in line for line in lines)


def wait_for_lag_zero(consumer: ClickStreamConsumer, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while consumer.lag() != {p: 0 for p in range(PARTITIONS)}:
        assert time.monotonic() < deadline, f"lag did not reach 0: {consumer.lag()}"
        time.sleep(0.05)


def produce(bootstrap: str, topic: str, messages: list[tuple[int, pa.Table]], fmt: str) -> None:
    """Per (partition, rows): one JSON message per row or one Arrow message, record timestamps as replay sets them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for partition, rows in messages:
        if fmt == "json":
            for row in rows.to_pylist():
                producer.send(topic, value=encode_json_event(row), partition=partition, headers=JSON_HEADERS, timestamp_ms=row["ts"])
        else:
            latest = max(rows.column("ts").to_pylist())
            producer.send(topic, value=encode_arrow_batch(rows), partition=partition, headers=ARROW_HEADERS, timestamp_ms=latest)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_out_of_order_times_and_a_hint_on_append_times(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, caplog: pytest.LogCaptureFixture, fmt: str, client: str,
) -> None:
    """Event times out of order around the wall clock; Tansu's answer (on append times) is detected and not used.

    Half the log is produced before wall time T, half after. In the first half each
    partition's first 24 events are older than T and the rest are shuffled around T, so
    every partition's first event with ts >= T is in the first half, before the offset
    Tansu answers for T (the first batch appended after T). Events after the start with
    ts < T are consumed too.
    """
    topic = f"shuffled-{fmt}"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    rng = np.random.default_rng(3)
    start_ms = int(time.time() * 1000) + 1500
    table = clicks.slice(0, 300)
    shifts = rng.integers(-3_600_000, 3_600_000, table.num_rows)
    early = np.zeros(table.num_rows, dtype=bool)
    for p in range(PARTITIONS):
        early[p * 50 : p * 50 + 24] = True  # rows of partition p in the first half (see messages below)
    times = np.where(early, start_ms - 1 - np.abs(shifts), start_ms + shifts)
    table = table.set_column(table.schema.get_field_index("ts"), "ts", pa.array(times, pa.int64()))
    halves = [table.slice(0, 150), table.slice(150)]

    def messages(half: pa.Table) -> list[tuple[int, pa.Table]]:
        rows_per_partition = half.num_rows // PARTITIONS
        out = []
        for p in range(PARTITIONS):
            rows = half.slice(p * rows_per_partition, rows_per_partition)
            out += [(p, rows.slice(i, 10)) for i in range(0, rows.num_rows, 10)]
        return out

    config = stream_config(broker, topic=topic, client=client, max_batch_events=40, start_at=start_ms, assignment="static")
    produce(broker.bootstrap, config.topic, messages(halves[0]), fmt)
    assert time.time() * 1000 < start_ms - 200, "producing the first half took too long"
    time.sleep((start_ms - time.time() * 1000) / 1000 + 0.3)
    produce(broker.bootstrap, config.topic, messages(halves[1]), fmt)

    log = read_log(broker.bootstrap, config.topic)
    expected = expected_from(log, start_ms)
    assert all(e.skipped >= 24 for e in expected.values())
    if fmt == "arrow":
        assert any(e.start_row > 0 for e in expected.values()), "the start should fall inside an Arrow message somewhere"
    with OffsetLookup(config) as lookup:
        answers = lookup.times(range(PARTITIONS), start_ms)
    for p, e in expected.items():
        hint = answers[p]
        assert hint is not None and hint[0] > e.start_offset, f"Tansu's answer {hint} should lie past the start {e.start_offset}"
        assert hint[1] != log[p][[m.offset for m in log[p]].index(hint[0])].timestamp_ms  # an append time
        late = [ts for m in log[p] if m.offset > e.start_offset for _, ts in m.events if ts < start_ms]
        assert late, "some events after the start are older than T"
    caplog.set_level(logging.INFO, logger="stream.consumer")

    with ClickStreamConsumer(config, SCHEMA, partitions=range(PARTITIONS)) as consumer:
        want = set().union(*(e.ids for e in expected.values()))
        batches = consume_ids(consumer, want)
        ids = ids_of(batches)
        assert len(ids) == len(set(ids)) and set(ids) == want
        assert consumer.skipped_before_start == sum(e.skipped for e in expected.values())
        assert assert_offsets_exact(batches, expected, {p: 0 for p in range(PARTITIONS)}) == ends(log)
    rejected = [r.getMessage() for r in caplog.records if "reading from the earliest offset" in r.getMessage()]
    assert len(rejected) == PARTITIONS
    assert len(start_lines(caplog)) == PARTITIONS


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_hint_on_record_timestamps_is_used(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, fmt: str, client: str,
) -> None:
    """What Apache Kafka answers (the first record with timestamp >= T) is checked, trusted and read from.

    Tansu looks up append times, so the answer Kafka would give is computed from the log
    (whose record timestamps replay sets to event times) and put in place of Tansu's.
    Messages before the hint are never read: only the rows before the start inside the
    hinted Arrow message are skipped, and the offsets stay exact.
    """
    start_ms = time_at(clicks, 0.5)
    config = stream_config(broker, topic=f"hinted-{fmt}", client=client, max_batch_events=60, start_at=start_ms)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt=fmt, arrow_batch_events=ARROW_ROWS, progress=False, stamp_event_times=True)
    log = read_log(broker.bootstrap, config.topic)
    for messages in log.values():  # replay's record timestamps: the event time (Arrow: the largest of the message)
        assert all(m.timestamp_ms == max(ts for _, ts in m.events) for m in messages)
    expected = expected_from(log, start_ms)
    kafka_answers = {p: next((m.offset, m.timestamp_ms) for m in messages if m.timestamp_ms >= start_ms) for p, messages in log.items()}
    assert all(kafka_answers[p][0] == e.start_offset > 0 for p, e in expected.items())
    asked = []

    def kafka_times(self: OffsetLookup, partitions: list[int], timestamp_ms: int) -> dict[int, tuple[int, int] | None]:
        asked.append((list(partitions), timestamp_ms))
        return {p: kafka_answers[p] for p in partitions}

    monkeypatch.setattr(OffsetLookup, "times", kafka_times)
    caplog.set_level(logging.INFO, logger="stream.consumer")

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        want = set().union(*(e.ids for e in expected.values()))
        batches = consume_ids(consumer, want)
        ids = ids_of(batches)
        assert len(ids) == len(set(ids)) and set(ids) == want
        assert consumer.skipped_before_start == sum(e.start_row for e in expected.values())
        assert min(b.first_offsets.get(p, 1 << 40) for b in batches for p in range(PARTITIONS)) > 0  # never read from 0
        assert assert_offsets_exact(batches, expected, {p: e.start_offset for p, e in expected.items()}) == ends(log)
    assert asked == [(list(range(PARTITIONS)), start_ms)]
    assert not [r for r in caplog.records if "reading from the earliest offset" in r.getMessage()]
    assert len(start_lines(caplog)) == PARTITIONS


@pytest.mark.parametrize("client", CLIENTS)
def test_a_checkpoint_position_wins_and_a_restart_reads_each_event_once(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, client: str,
) -> None:
    """start_offsets beat start_at; a restart from a start_at run's offsets continues it exactly."""
    start_ms = time_at(clicks, 0.6)
    config = stream_config(broker, topic="at-checkpoint", client=client, max_batch_events=50, start_at=start_ms,
                           assignment="static")
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt="json", progress=False, stamp_event_times=True)
    log = read_log(broker.bootstrap, config.topic)
    expected = expected_from(log, start_ms)

    # Partition 0 from offset 5 (long before its start at T), partition 1 from past its start.
    checkpoint = {0: 5, 1: expected[1].start_offset + 7}
    mixed = expected_from(log, start_ms, start_offsets=checkpoint)
    with ClickStreamConsumer(config, SCHEMA, start_offsets=checkpoint, partitions=range(PARTITIONS)) as consumer:
        want = set().union(*(e.ids for e in mixed.values()))
        batches = consume_ids(consumer, want)
        assert sorted(ids_of(batches)) == sorted(want)
        assert consumer.skipped_before_start == expected[2].skipped  # only the partition without a position skips
        assert assert_offsets_exact(batches, mixed, {0: 5, 1: checkpoint[1], 2: 0}) == ends(log)

    # A run with start_at stops after two batches; a restart from its offsets finishes it.
    want = set().union(*(e.ids for e in expected.values()))
    with ClickStreamConsumer(config, SCHEMA, partitions=range(PARTITIONS)) as first:
        first_run = [b for b in (first.next_batch(timeout_s=10) for _ in range(2)) if b is not None]
    assert len(first_run) == 2
    resume = first_run[-1].next_offsets
    assert 0 < len(ids_of(first_run)) < len(want)
    with ClickStreamConsumer(config, SCHEMA, start_offsets=resume, partitions=range(PARTITIONS)) as second:
        second_run = consume_ids(second, want - set(ids_of(first_run)))
    ids = ids_of(first_run) + ids_of(second_run)
    assert len(ids) == len(set(ids)) and set(ids) == want


@pytest.mark.parametrize("client", CLIENTS)
def test_a_member_joining_and_leaving_keeps_the_start_exact(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, client: str,
) -> None:
    """Two rebalances mid-stream: the first member resumes at its own positions, past the start it found."""
    start_ms = time_at(clicks, 0.3)
    config = stream_config(broker, topic="at-members", client=client, max_batch_events=25, prefetch_batches=1, start_at=start_ms)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt="arrow", arrow_batch_events=ARROW_ROWS, progress=False, stamp_event_times=True)
    expected = expected_from(read_log(broker.bootstrap, config.topic), start_ms)
    want = set().union(*(e.ids for e in expected.values()))

    with ClickStreamConsumer(config, SCHEMA) as first:
        batches = [b for b in [first.next_batch(timeout_s=10)] if b is not None]
        with ClickStreamConsumer(config, SCHEMA) as second:
            deadline = time.monotonic() + 20
            while len(first.assigned_partitions()) == PARTITIONS:  # slowly: the group must rebalance mid-stream
                assert time.monotonic() < deadline, "the group did not rebalance"
                batch = first.next_batch(timeout_s=0.2)
                batches += [batch] if batch is not None else []
                time.sleep(0.2)
            assert second.next_batch(timeout_s=10) is not None  # the second member reads (not counted)
        seen = set(ids_of(batches))
        assert seen < want, "the first member should not have finished before the rebalance"
        deadline = time.monotonic() + 20
        while len(first.assigned_partitions()) < PARTITIONS:
            assert time.monotonic() < deadline, "the first member did not get every partition back"
            batch = first.next_batch(timeout_s=0.2)
            batches += [batch] if batch is not None else []
        batches += consume_ids(first, want - set(ids_of(batches)))
        ids = ids_of(batches)
        assert len(ids) == len(set(ids)) and set(ids) == want


# --------------------------------------------------------------------------- latest, committed


@pytest.mark.parametrize("assignment", ["group", "static"])
@pytest.mark.parametrize("client", CLIENTS)
def test_latest_reads_only_events_produced_after_the_start(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, client: str, assignment: str,
) -> None:
    """The end is the highwater of a fetch: Tansu's ListOffsets end (last batch start + 1) would re-read old events."""
    config = stream_config(broker, topic="at-latest", client=client, start_at="latest", assignment=assignment)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    old, new = clicks.slice(0, 300), clicks.slice(300, 150)
    replay(old, config, fmt="json", progress=False, stamp_event_times=True)
    before = ends(read_log(broker.bootstrap, config.topic))
    partitions = range(PARTITIONS) if assignment == "static" else None
    with ClickStreamConsumer(config, SCHEMA, partitions=partitions) as consumer:
        deadline = time.monotonic() + 20
        while len(consumer.lag()) < PARTITIONS:  # assigned, positioned and fetched from
            assert time.monotonic() < deadline, "no fetch from every partition"
            assert consumer.next_batch(timeout_s=0.1) is None
        assert consumer.lag() == {p: 0 for p in range(PARTITIONS)}
        replay(new, config, fmt="json", progress=False, stamp_event_times=True)
        batches = consume_ids(consumer, set(new.column("event_id").to_pylist()))
        assert sorted(ids_of(batches)) == sorted(new.column("event_id").to_pylist())
        after = ends(read_log(broker.bootstrap, config.topic))
        assert batches[-1].next_offsets == after
        assert all(b.first_offsets[p] >= before[p] for b in batches for p in b.first_offsets)
        assert consumer.skipped_before_start == 0


@pytest.mark.parametrize("client", CLIENTS)
def test_committed_resumes_at_the_group_offset_else_earliest(
    broker: EmbeddedBroker, stream_config: MakeConfig, clicks: pa.Table, client: str,
) -> None:
    config = stream_config(broker, topic="at-committed", client=client, start_at="committed", max_batch_events=100)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks.slice(0, 300), config, fmt="json", progress=False, stamp_event_times=True)
    log = read_log(broker.bootstrap, config.topic)
    commits = {0: 10, 1: 25}  # partition 2: nothing committed
    committer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=config.group_id, enable_auto_commit=False)
    committer.commit({TopicPartition(config.topic, p): OffsetAndMetadata(o, "", -1) for p, o in commits.items()})
    committer.close()
    expected = expected_from(log, 0, start_offsets={**commits, 2: 0})

    with ClickStreamConsumer(config, SCHEMA) as consumer:
        want = set().union(*(e.ids for e in expected.values()))
        batches = consume_ids(consumer, want)
        assert sorted(ids_of(batches)) == sorted(want)
        assert assert_offsets_exact(batches, expected, {**commits, 2: 0}) == ends(log)
