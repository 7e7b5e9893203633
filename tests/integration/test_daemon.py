"""The training daemon against a real broker: exactly-once across kills, bad input, pauses."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from inttower.config import AppConfig, DaemonConfig
from inttower.daemon import TrainingDaemon
from model.audit import TrainedEventLog
from model.config import ModelConfig, TrainConfig
from monitoring.config import MonitoringConfig
from stream.broker import create_topic
from stream.codec import (
    ARROW_HEADERS,
    ARROW_STREAM_MARKER,
    JSON_HEADERS,
    encode_json_event,
)
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import REPO_ROOT
from tests.integration.daemon_toml import train_process, write_daemon_toml

pytestmark = pytest.mark.slow

SMALL_MODEL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
TOPIC, DEAD_LETTERS, PARTITIONS = "clicks", "clicks.dead-letter", 4
RUN_TIMEOUT_S = 120


def _app(stream, tmp_path: Path, **daemon) -> AppConfig:
    daemon_config = DaemonConfig(
        checkpoint_dir=str(tmp_path / "checkpoints"), audit_log=str(tmp_path / "trained.txt"),
        status_every_s=1.0, commit_every_s=1.0, **daemon,
    )
    return AppConfig(model=SMALL_MODEL, train=TrainConfig(threads=1), stream=stream, daemon=daemon_config,
                     monitoring=MonitoringConfig(port=0))


def _topics(broker) -> None:
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    create_topic(broker.bootstrap, DEAD_LETTERS, 1)


def _run(app: AppConfig, stop: threading.Event | None = None, observers=()):
    stop = stop or threading.Event()
    watchdog = threading.Timer(RUN_TIMEOUT_S, stop.set)
    watchdog.start()
    try:
        return TrainingDaemon(app, stop, observers).run()
    finally:
        watchdog.cancel()


def _produced_ids(table) -> Counter:
    return Counter(table.column("event_id").to_pylist())


@pytest.mark.parametrize("fmt", ["json", "arrow"])
def test_json_and_arrow_streams_train_every_event_once(broker, stream_config, tmp_path, fmt):
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=6000, seed=1))
    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS, max_batch_events=256)
    replay(table, stream, fmt=fmt, arrow_batch_events=256, progress=False)
    summary = _run(_app(stream, tmp_path, stop_after_events=6000))
    assert summary.events == 6000
    assert Counter(TrainedEventLog.read(tmp_path / "trained.txt")) == _produced_ids(table)
    assert summary.checkpoints >= 1 and sum(summary.dead_lettered.values()) == 0


def test_an_event_sent_twice_is_trained_once(broker, stream_config, tmp_path):
    """A producer's retry: the same event id again, soon after (labelled events, the default mode)."""
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=3000, seed=5))
    retried = table.take(sorted(random.Random(5).sample(range(3000), 200)))
    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS, max_batch_events=256)
    replay(table, stream, fmt="json", progress=False)
    replay(retried, stream, fmt="arrow", arrow_batch_events=64, progress=False)  # the same ids, in another format
    stop = threading.Event()
    daemon = TrainingDaemon(_app(stream, tmp_path, stop_when_idle_s=5.0), stop)
    summary = daemon.run()
    assert summary.events == 3000
    assert Counter(TrainedEventLog.read(tmp_path / "trained.txt")) == _produced_ids(table)
    assert daemon.telemetry.metrics.events_duplicates._value.get() == 200


def _bad_messages(good_rows: list[dict], max_bytes: int) -> list[tuple[str, bytes, list]]:
    """One recipe per reject reason, cycled to 1,000 messages."""
    def event(i: int, **changes) -> dict:
        row = json.loads(json.dumps(good_rows[i % len(good_rows)]))
        row["event_id"] = f"bad-{i}"
        row.update(changes)
        return row

    def missing(i):
        row = event(i)
        del row["label"]
        return encode_json_event(row)

    def non_finite(i):
        row = event(i)
        row["item"]["price"] = float("nan")
        return json.dumps(row).encode()  # json.dumps writes the NaN literal, as a buggy producer would

    recipes = [
        ("oversize", lambda i: encode_json_event(event(i, padding="x" * (max_bytes + 10))), JSON_HEADERS),
        ("invalid_json", lambda i: b'{"event_id": "bad-' + str(i).encode() + b'", "ts": ', JSON_HEADERS),
        ("invalid_arrow", lambda i: ARROW_STREAM_MARKER + os.urandom(64), ARROW_HEADERS),
        ("missing_field", missing, JSON_HEADERS),
        ("wrong_type", lambda i: encode_json_event(event(i, ts="yesterday")), JSON_HEADERS),
        ("bad_label", lambda i: encode_json_event(event(i, label=2)), JSON_HEADERS),
        ("non_finite", non_finite, JSON_HEADERS),
    ]
    return [(recipes[i % len(recipes)][0], recipes[i % len(recipes)][1](i), list(recipes[i % len(recipes)][2])) for i in range(1000)]


def test_malformed_messages_are_dead_lettered_and_good_ones_all_trained(broker, stream_config, tmp_path):
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=10_000, seed=2))
    max_bytes = 4096
    good = [(None, encode_json_event(row), list(JSON_HEADERS), row["user_id"]) for row in table.to_pylist()]
    bad = [(reason, payload, headers, i) for i, (reason, payload, headers) in enumerate(_bad_messages(table.slice(0, 50).to_pylist(), max_bytes))]
    messages = good + bad
    random.Random(0).shuffle(messages)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20, max_request_size=1 << 20)
    for _, payload, headers, key in messages:
        producer.send(TOPIC, value=payload, key=str(key).encode(), headers=headers)
    producer.flush()
    producer.close()

    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS, max_batch_events=512, max_message_bytes=max_bytes)
    summary = _run(_app(stream, tmp_path, stop_after_events=10_000))
    assert summary.events == 10_000
    assert Counter(TrainedEventLog.read(tmp_path / "trained.txt")) == _produced_ids(table)
    expected = Counter(reason for reason, *_ in bad)
    assert summary.dead_lettered == dict(expected)

    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    reader.assign([TopicPartition(DEAD_LETTERS, 0)])
    dead = list(reader)
    reader.close()
    assert len(dead) == 1000
    headers = [dict(m.headers) for m in dead]
    assert Counter(h["reason"].decode() for h in headers) == expected
    assert all(h["source-topic"] == TOPIC.encode() and h["source-partition"] and h["source-offset"] for h in headers)


def test_broker_paused_mid_stream_loses_and_repeats_nothing(broker, stream_config, tmp_path):
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=12_000, seed=3))
    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS, max_batch_events=256)
    replay(table, stream, fmt="arrow", arrow_batch_events=256, progress=False)
    audit = tmp_path / "trained.txt"

    def pause_once_mid_stream():
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(TrainedEventLog.read(audit)) < 3000 and time.monotonic() < deadline:
            time.sleep(0.05)
        broker.pause()
        time.sleep(10)
        broker.resume()

    pauser = threading.Thread(target=pause_once_mid_stream)
    pauser.start()
    summary = _run(_app(stream, tmp_path, stop_after_events=12_000))
    pauser.join()
    assert summary.events == 12_000
    assert Counter(TrainedEventLog.read(audit)) == _produced_ids(table)


def _write_config(path: Path, broker, tmp_path: Path, events: int) -> Path:
    return write_daemon_toml(path, broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, events, client="kafka-python")


def _wait_for_trained(audit: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(TrainedEventLog.read(audit)) < count:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "daemon made no progress"
        time.sleep(0.05)


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM])
def test_killed_daemon_restarts_and_trains_every_event_exactly_once(broker, tmp_path, kill):
    _topics(broker)
    events = 12_000
    table = generate_synthetic_log(SyntheticLogConfig(events=events, seed=4))
    from stream.config import StreamConfig

    replay(table, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), fmt="arrow", arrow_batch_events=256, progress=False)
    config = _write_config(tmp_path / "c.toml", broker, tmp_path, events)
    audit = tmp_path / "trained.txt"

    first = train_process(config)
    _wait_for_trained(audit, random.Random(int(kill)).randint(2000, 8000), first)
    sent = time.monotonic()
    first.send_signal(kill)
    first.wait(timeout=30)
    if kill == signal.SIGTERM:  # clean shutdown: quick, exit 0, a final checkpoint
        assert first.returncode == 0 and time.monotonic() - sent < 10
        assert "stopped after" in first.stdout.read()
    second = train_process(config)
    out, _ = second.communicate(timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, out
    assert "restored ckpt-" in out
    trained = Counter(TrainedEventLog.read(audit))
    assert trained == _produced_ids(table), (len(trained), sum(trained.values()))


def test_unreachable_broker_at_startup_is_one_line_and_exit_code_3(tmp_path):
    from stream.broker import free_port

    config = tmp_path / "c.toml"
    config.write_text(f'[stream]\nbootstrap_servers = ["127.0.0.1:{free_port()}"]\nstartup_timeout_s = 2.0\n'
                      f'[daemon]\ncheckpoint_dir = "{tmp_path / "ck"}"\n[monitoring]\nport = 0\n')
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "inttower.cli", "train", "--config", str(config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert time.monotonic() - started < 30
    lines = [line for line in result.stderr.splitlines() if line.startswith("inttower: error")]
    assert len(lines) == 1 and "127.0.0.1" in lines[0]
    assert "Traceback" not in result.stderr


def test_replay_command_produces_the_log_in_both_formats(broker, tmp_path):
    from stream.clicklog import write_click_log

    table = generate_synthetic_log(SyntheticLogConfig(events=3000, seed=5))
    log = write_click_log(table, tmp_path / "log.parquet")
    for fmt in ("json", "arrow"):
        topic = f"replayed-{fmt}"
        create_topic(broker.bootstrap, topic, 2)
        result = subprocess.run(
            [sys.executable, "-m", "inttower.cli", "replay", str(log), "--topic", topic, "--bootstrap", broker.bootstrap,
             "--format", fmt, "--max"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "replayed 3000 events" in result.stdout
        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=3000)
        reader.assign([TopicPartition(topic, p) for p in range(2)])
        reader.seek_to_beginning()
        messages = list(reader)
        reader.close()
        if fmt == "json":
            assert len(messages) == 3000
        else:
            import pyarrow as pa

            assert sum(pa.ipc.open_stream(m.value).read_all().num_rows for m in messages) == 3000
