"""ClickStreamConsumer on the confluent-kafka client: the same behaviour as on kafka-python.

The consumer and daemon integration tests are imported here and run again with
``[stream] client = "confluent"``: this module's ``stream_config`` fixture overrides the
conftest one for every test collected in it. Tests that reach into kafka-python objects
are replaced by client-neutral ones below, which run on both clients.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition

import tests.integration.test_daemon as daemon_tests
from stream.broker import BrokerUnavailableError, EmbeddedBroker, create_topic, free_port
from stream.config import StreamConfig
from stream.consumer import ClickStreamConsumer
from stream.consumer_clients import librdkafka_options
from stream.replay import partition_for_key, replay
from tests.integration.test_daemon import (  # noqa: F401  (collected here, on the confluent client)
    test_broker_paused_mid_stream_loses_and_repeats_nothing,
    test_json_and_arrow_streams_train_every_event_once,
    test_killed_daemon_restarts_and_trains_every_event_exactly_once,
    test_malformed_messages_are_dead_lettered_and_good_ones_all_trained,
)
from tests.integration.test_stream_consumer import (  # noqa: F401  (collected here, on the confluent client)
    PARTITIONS,
    SCHEMA,
    clicks,
    consume,
    event_ids,
    test_broker_pause_loses_and_repeats_nothing,
    test_malformed_messages_go_to_the_dead_letter_topic,
    test_polling_thread_errors_reach_the_caller,
    test_replayed_log_is_consumed_exactly,
    test_restart_from_recorded_offsets_reads_each_event_once,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = ("kafka-python", "confluent")


@pytest.fixture
def stream_config(stream_config: Callable[..., StreamConfig]) -> Callable[..., StreamConfig]:
    """The conftest factory, on the confluent client."""

    def make(server: EmbeddedBroker, **changes: object) -> StreamConfig:
        return stream_config(server, **{"client": "confluent", **changes})

    return make


@pytest.fixture(autouse=True)
def daemon_subprocess_on_confluent(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_daemon.py's subprocess tests write their TOML with `write_daemon_toml`, asking for kafka-python: confluent here."""
    original = daemon_tests.write_daemon_toml

    def write(path: Path, *args: object, **kwargs: object) -> Path:
        return original(path, *args, **{**kwargs, "client": "confluent"})

    monkeypatch.setattr(daemon_tests, "write_daemon_toml", write)


def committed(bootstrap: str, group_id: str, topic: str, partitions: int) -> dict[int, int | None]:
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        return {p: reader.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        reader.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_member_joining_and_leaving_repeats_and_skips_nothing(
    broker: EmbeddedBroker, stream_config: Callable[..., StreamConfig], clicks: pa.Table,
    caplog: pytest.LogCaptureFixture, client: str,
) -> None:
    """Two rebalances mid-stream (a second member joins, reads, leaves): the first re-seeks to its own positions."""
    config = stream_config(broker, topic="clicks-members", max_batch_events=300, prefetch_batches=2, client=client)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks.slice(0, 6000), config, fmt="json", progress=False)
    caplog.set_level(logging.INFO, logger="stream.consumer")

    with ClickStreamConsumer(config, SCHEMA) as first:
        batches = consume(first, 6000, batches=4)
        with ClickStreamConsumer(config, SCHEMA) as second:
            deadline = time.monotonic() + 20
            while len(first.assigned_partitions()) == PARTITIONS:  # keep training: a full queue stops polling
                assert time.monotonic() < deadline, "the group did not rebalance"
                batch = first.next_batch(timeout_s=0.2)
                batches += [batch] if batch is not None else []
            consume(second, 1, batches=1)  # the second member reads (its batches are not counted)
        batches += consume(first, 6000 - sum(b.events for b in batches))
        ids = event_ids(batches)
        assert len(ids) == len(set(ids)) == 6000
        assert first.next_batch(timeout_s=0.5) is None
        wait_for(lambda: first.assigned_partitions() == list(range(PARTITIONS)), 15, "the first member to own all partitions again")
    assignments = [r for r in caplog.records if r.getMessage().startswith("partitions assigned")]
    assert len(assignments) >= 4, "both members were assigned partitions, and the first one twice"


@pytest.mark.parametrize("assignment", ["group", "static"])
@pytest.mark.parametrize("client", CLIENTS)
def test_commits_reach_the_group_and_lag_counts_from_highwater(
    broker: EmbeddedBroker, stream_config: Callable[..., StreamConfig], clicks: pa.Table, client: str, assignment: str,
) -> None:
    config = stream_config(broker, topic="clicks-commit", max_batch_events=500, assignment=assignment, client=client)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    summary = replay(clicks.slice(0, 4000), config, fmt="json", progress=False)
    partitions = range(PARTITIONS) if assignment == "static" else None

    with ClickStreamConsumer(config, SCHEMA, partitions=partitions) as consumer:
        batches = consume(consumer, 1500, batches=3)
        position = batches[-1].next_offsets
        assert sum(position.values()) == sum(b.messages for b in batches)
        consumer.commit(position)
        wait_for(lambda: len(consumer.lag()) == PARTITIONS, 10, "highwater on every partition")
        lag = consumer.lag()
        per_partition = collections.Counter(partition_for_key(str(u).encode(), PARTITIONS)
                                            for u in clicks.slice(0, 4000).column("user_id").to_pylist())
        assert all(lag[p] == per_partition[p] - position[p] for p in position)
        expected = {p: position.get(p) for p in range(PARTITIONS)}
        wait_for(lambda: committed(broker.bootstrap, config.group_id, config.topic, PARTITIONS) == expected, 10, "the commit")
        rest = consume(consumer, 4000 - sum(b.events for b in batches))
        consumer.commit(rest[-1].next_offsets)
        wait_for(lambda: consumer.lag() == {p: 0 for p in range(PARTITIONS)}, 10, "lag 0")
    final = committed(broker.bootstrap, config.group_id, config.topic, PARTITIONS)  # close commits what is pending
    assert sum(v or 0 for v in final.values()) == summary.messages


def test_unreachable_bootstrap_fails_fast_with_one_line_on_confluent() -> None:
    closed = f"127.0.0.1:{free_port()}"
    config = StreamConfig(bootstrap_servers=(closed,), startup_timeout_s=1.5, session_timeout_ms=2000,
                          heartbeat_interval_ms=500, client="confluent")
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as failure:
        ClickStreamConsumer(config, SCHEMA)
    assert time.monotonic() - started < config.startup_timeout_s + 2.0
    message = str(failure.value)
    assert "\n" not in message and closed in message and "1.5" in message


@pytest.mark.parametrize("client", CLIENTS)
def test_a_backlog_is_read_across_partitions_from_the_start(
    broker: EmbeddedBroker, stream_config: Callable[..., StreamConfig], clicks: pa.Table, client: str,
) -> None:
    """Small fetches from explicit earliest offsets interleave the partitions of a backlog."""
    config = stream_config(broker, topic="clicks-interleave", max_batch_events=2000, client=client)
    create_topic(broker.bootstrap, config.topic, PARTITIONS)
    replay(clicks, config, fmt="json", progress=False)
    with ClickStreamConsumer(config, SCHEMA) as consumer:
        positions = consume(consumer, 6000, batches=3)[-1].next_offsets  # of 20,000: ~5,000 per partition
    print(client, positions)
    assert sorted(positions) == list(range(PARTITIONS))
    assert max(positions.values()) - min(positions.values()) < 1500


def _fetched_ahead(config: StreamConfig, messages: int) -> tuple[int, int]:
    """Consuming ``messages`` slowly, the most messages (and their bytes) librdkafka had received and not handed out."""
    taken, taken_bytes, most, most_bytes = 0, 0, 0, 0

    def on_stats(raw: str) -> None:
        nonlocal most, most_bytes
        partitions = json.loads(raw)["topics"].get(config.topic, {}).get("partitions", {})
        received = [(p["rxmsgs"], p["rxbytes"]) for key, p in partitions.items() if key != "-1"]
        most = max(most, sum(m for m, _ in received) - taken)
        most_bytes = max(most_bytes, sum(b for _, b in received) - taken_bytes)

    consumer = confluent_kafka.Consumer({**librdkafka_options(config), "stats_cb": on_stats, "statistics.interval.ms": 100})
    try:
        consumer.assign([confluent_kafka.TopicPartition(config.topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in range(PARTITIONS)])
        while taken < messages:  # ~50 a second: the fetcher has time to fill whatever it may
            for message in consumer.consume(num_messages=1, timeout=0.02):
                taken += 1
                taken_bytes += len(message.value() or b"")
            time.sleep(0.02)
    finally:
        consumer.close()
    return most, most_bytes


def test_client_queue_kbytes_bounds_what_librdkafka_fetches_ahead(
    broker: EmbeddedBroker, stream_config: Callable[..., StreamConfig], clicks: pa.Table,
) -> None:
    """What librdkafka fetches ahead stays near the configured KiB; its default (64 MiB) takes the whole backlog."""
    topic = "clicks-queue"
    create_topic(broker.bootstrap, topic, PARTITIONS)
    replay(clicks, stream_config(broker, topic=topic), fmt="json", progress=False)
    capped, capped_bytes = _fetched_ahead(stream_config(broker, topic=topic, client_queue_kbytes=64), 100)
    default, _ = _fetched_ahead(stream_config(broker, topic=topic, client_queue_kbytes=65_536), 100)
    print(f"fetched ahead: {capped:,} messages ({capped_bytes:,} bytes) at 64 KiB, {default:,} messages at 64 MiB")
    assert 0 < capped_bytes <= 64 * 1024 + 2 * StreamConfig().fetch_max_bytes  # one fetch response may overshoot
    assert default >= clicks.num_rows - 200
