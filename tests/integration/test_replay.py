"""Replay: pacing behaviour and key routing (a user lands on one partition in both formats)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import DefaultPartitioner

from stream.broker import EmbeddedBroker, create_topic
from stream.codec import RawMessage, decode_messages
from stream.config import StreamConfig
from stream.events import EventSchema
from stream.replay import partition_for_key, replay, user_partitions
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

PARTITIONS = 3


@pytest.fixture(scope="module")
def small_log() -> pa.Table:
    return generate_synthetic_log(SyntheticLogConfig(events=300, seed=2, users=40, initial_items=30, events_per_second=50.0))


def read_back(broker: EmbeddedBroker, topic: str, events: int) -> dict[int, list[str]]:
    """Event ids per partition, in offset order (decoding both formats)."""
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    reader.assign(tps)
    reader.seek_to_beginning()
    deadline = time.monotonic() + 10
    schema = EventSchema.of([("segment", "categorical", "user")])
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    seen = 0
    while seen < events and time.monotonic() < deadline:
        for records in reader.poll(timeout_ms=300).values():
            for r in records:
                decoded = decode_messages([RawMessage(r.partition, r.offset, r.value, r.headers, r.timestamp)], schema, 1 << 22)
                out[r.partition] += decoded.table.column("event_id").to_pylist()
                seen += decoded.table.num_rows
    reader.close()
    return out


def test_partition_for_key_matches_kafka_python() -> None:
    partitioner = DefaultPartitioner()
    for user in range(200):
        key = str(user).encode()
        assert partition_for_key(key, 7) == partitioner(key, list(range(7)), list(range(7)))
    ids = pa.array([5, 17, 5, 99], pa.int64())
    assert user_partitions(ids, 7).tolist() == [partition_for_key(str(u).encode(), 7) for u in (5, 17, 5, 99)]


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_rate_paces_the_replay(broker: EmbeddedBroker, small_log: pa.Table, fmt: str) -> None:
    config = StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=f"paced-{fmt}")
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    rate = 250.0
    started = time.monotonic()
    summary = replay(small_log, config, rate=rate, fmt=fmt, arrow_batch_events=64, progress=False)
    elapsed = time.monotonic() - started
    expected = small_log.num_rows / rate  # 1.2 s
    assert summary.events == small_log.num_rows
    assert 0.7 * expected <= summary.seconds <= elapsed
    assert elapsed < 3 * expected + 3.0
    if fmt == "arrow":
        assert summary.messages > PARTITIONS  # paced: short messages, not one per partition


def test_speedup_divides_event_time_gaps(broker: EmbeddedBroker, small_log: pa.Table) -> None:
    config = StreamConfig(bootstrap_servers=(broker.bootstrap,), topic="sped-up")
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    ts = small_log.column("ts").to_numpy()
    span_s = (ts.max() - ts.min()) / 1000.0
    summary = replay(small_log, config, speedup=5.0, fmt="json", progress=False)
    assert summary.seconds >= 0.7 * span_s / 5.0


def test_a_user_lands_on_the_same_partition_in_both_formats(broker: EmbeddedBroker, small_log: pa.Table) -> None:
    placements = {}
    for fmt in ("json", "arrow"):
        config = StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=f"routing-{fmt}")
        create_topic(broker.bootstrap, config.topic, PARTITIONS)
        replay(small_log, config, fmt=fmt, arrow_batch_events=50, progress=False)
        placements[fmt] = read_back(broker, config.topic, small_log.num_rows)
    assert placements["json"] == placements["arrow"]  # same partition *and* same (time) order within it
    user_of = dict(zip(small_log.column("event_id").to_pylist(), small_log.column("user_id").to_pylist()))
    for p, ids in placements["json"].items():
        assert {partition_for_key(str(user_of[e]).encode(), PARTITIONS) for e in ids} <= {p}
        ts_of = dict(zip(small_log.column("event_id").to_pylist(), small_log.column("ts").to_pylist()))
        assert np.all(np.diff([ts_of[e] for e in ids]) >= 0)
