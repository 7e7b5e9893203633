"""Joined feedback against a real broker: impressions and later clicks, labelled exactly once across kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from inttower.config import AppConfig, DaemonConfig
from inttower.daemon import TrainingDaemon
from model.audit import TrainedEventLog
from model.config import ModelConfig, TrainConfig
from monitoring.config import MonitoringConfig
from monitoring.memory import malloc_info
from stream.broker import create_topic
from stream.codec import JSON_HEADERS, encode_json_event
from stream.config import FeedbackConfig, StreamConfig
from stream.delays import DelayConfig, add_click_times
from stream.feedback_replay import replay_feedback
from stream.feedback_wire import encode_click
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.integration.daemon_toml import train_process, write_daemon_toml
from tests.integration.test_daemon import _run

pytestmark = pytest.mark.slow

SMALL_MODEL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
TOPIC, DEAD_LETTERS, PARTITIONS = "feedback", "feedback.dead-letter", 3
RUN_TIMEOUT_S = 120
WINDOW_S, HORIZON_S = 120.0, 1800.0


def _topics(broker) -> None:
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    create_topic(broker.bootstrap, DEAD_LETTERS, 1)


def _feedback_log(events: int, seed: int) -> pa.Table:
    """Synthetic events with log-normal click delays (median 60 s): most within the window, some late, a few past the horizon."""
    table = generate_synthetic_log(SyntheticLogConfig(events=events, seed=seed))
    return add_click_times(table, DelayConfig("lognormal", mean_s=60.0, sigma=2.0, seed=seed))


def _expected(table: pa.Table, fnw: bool) -> Counter:
    """The audit lines an uninterrupted run writes: each impression with its windowed label; FNW duplicates for late clicks."""
    lines: Counter = Counter()
    for event_id, ts, click_ts in zip(*(table.column(c).to_pylist() for c in ("event_id", "ts", "click_ts"))):
        delay_ms = None if click_ts is None else click_ts - ts
        in_window = delay_ms is not None and delay_ms <= WINDOW_S * 1000
        lines[f"{event_id}\t{int(in_window)}"] += 1
        if fnw and delay_ms is not None and WINDOW_S * 1000 < delay_ms <= HORIZON_S * 1000:
            lines[f"{event_id}\t1\tfnw"] += 1
    return lines


def _end_watermark(table: pa.Table) -> int:
    return int(pa.compute.max(table.column("ts")).as_py()) + int(HORIZON_S * 1000) + 1


def _app(stream: StreamConfig, tmp_path: Path, feedback: FeedbackConfig, **daemon) -> AppConfig:
    daemon_config = DaemonConfig(checkpoint_dir=str(tmp_path / "checkpoints"), audit_log=str(tmp_path / "trained.txt"),
                                 status_every_s=1.0, commit_every_s=1.0, **daemon)
    return AppConfig(model=SMALL_MODEL, train=TrainConfig(threads=1), stream=stream, feedback=feedback,
                     daemon=daemon_config, monitoring=MonitoringConfig(port=0))


def test_impressions_and_clicks_train_once_with_their_windowed_labels_and_bad_clicks_are_dead_lettered(
    broker, stream_config, tmp_path, caplog,
):
    _topics(broker)
    table = _feedback_log(3000, seed=1)
    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS, max_batch_events=128)
    # Noise first (partition by the same keys): a retried impression, a repeated click, an orphan, a malformed click.
    first = table.slice(0, 1).drop_columns(["label", "click_ts"]).to_pylist()[0]
    labelled = table.slice(1, 1).drop_columns(["click_ts"]).to_pylist()[0] | {"event_id": "labelled-1"}
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    key = str(first["user_id"]).encode()
    for value in (encode_json_event(first), encode_json_event(first), encode_click(first["event_id"], first["ts"] + 1),
                  encode_click(first["event_id"], first["ts"] + 2), encode_click("nobody", first["ts"]),
                  b'{"type": "click", "ts": 5}', encode_json_event(labelled), encode_json_event(labelled)):
        producer.send(TOPIC, value=value, key=key, headers=list(JSON_HEADERS))
    producer.flush()
    producer.close()
    rest = table.slice(1)
    replay_feedback(rest, stream, progress=False, end_watermark_ms=_end_watermark(table))

    expected = _expected(rest, fnw=False) + Counter({f"{first['event_id']}\t1": 1, f"labelled-1\t{labelled['label']}": 1})
    app = _app(stream, tmp_path, FeedbackConfig(mode="joined", label_window_s=WINDOW_S, click_horizon_s=HORIZON_S,
                                                late_click_policy="drop"),
               stop_after_events=sum(expected.values()),
               # The heap housekeeping runs and reports: trims, and malloc_info beside each memory report.
               malloc_trim_every_s=0.2, memory_report_every_s=0.5, malloc_info_dir=str(tmp_path / "malloc"))
    steps: list[int] = []

    class StepSizes:
        def on_batch(self, table, results):
            steps.append(table.num_rows)

    with caplog.at_level("INFO", logger="inttower.daemon"):
        summary = _run(app, observers=[StepSizes()])
    assert Counter(TrainedEventLog.read(tmp_path / "trained.txt")) == expected
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory at ")]
    assert any(" trims (" in line for line in reports), reports
    if malloc_info() is not None:  # glibc
        assert len(list((tmp_path / "malloc").glob("malloc-*.xml"))) == len(reports) >= 1
    # The closing watermark releases the last window's ~6,000 impressions at once: they train in steps of 128.
    assert max(steps) == 128 and sum(steps) == sum(expected.values())
    assert summary.dead_lettered == {"unknown_impression": 1, "missing_field": 1}
    assert summary.models["inttower"]["auc"] > 0.5

    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    reader.assign([TopicPartition(DEAD_LETTERS, 0)])
    reasons = Counter(dict(m.headers)["reason"].decode() for m in reader)
    reader.close()
    assert reasons == {"unknown_impression": 1, "missing_field": 1}


def test_a_clicks_topic_with_another_partition_count_is_one_line(broker, stream_config, tmp_path):
    from inttower.errors import UserError

    _topics(broker)
    create_topic(broker.bootstrap, "other-clicks", PARTITIONS + 1)
    stream = stream_config(broker, topic=TOPIC, dead_letter_topic=DEAD_LETTERS)
    app = _app(stream, tmp_path, FeedbackConfig(mode="joined", clicks_topic="other-clicks"), stop_after_events=1)
    with pytest.raises(UserError, match="'other-clicks' has 4 partitions and \\[stream\\] topic 'feedback' 3"):
        TrainingDaemon(app, threading.Event()).run()


def _feedback_toml(policy: str, clicks_topic: str = "") -> str:
    return f"""
[feedback]
mode = "joined"
label_window_s = {WINDOW_S}
click_horizon_s = {HORIZON_S}
late_click_policy = "{policy}"
clicks_topic = "{clicks_topic}"
"""


def _wait_for_lines(audit: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(TrainedEventLog.read(audit)) < count:
        if process.poll() is not None:
            return  # finished before the kill point: the later runs find nothing left
        assert time.monotonic() < deadline, "daemon made no progress"
        time.sleep(0.02)


@pytest.mark.parametrize(("policy", "clicks_topic"), [("drop", ""), ("fnw", ""), ("fnw", "feedback-clicks")])
def test_sigkill_at_three_points_labels_every_impression_exactly_once(broker, tmp_path, policy, clicks_topic):
    """Clicks on the impressions' topic, or on their own (read side by side, often far ahead of their impressions)."""
    _topics(broker)
    if clicks_topic:
        create_topic(broker.bootstrap, clicks_topic, PARTITIONS)
    table = _feedback_log(6000, seed=7)
    replay_feedback(table, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), progress=False,
                    end_watermark_ms=_end_watermark(table), clicks_topic=clicks_topic or None)
    expected = _expected(table, fnw=policy == "fnw")
    total = sum(expected.values())
    config = write_daemon_toml(
        tmp_path / "c.toml", broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, total,
        extra_daemon=_feedback_toml(policy, clicks_topic),
    )
    audit = tmp_path / "trained.txt"
    for point in sorted(random.Random(policy).sample(range(500, total - 500), 3)):
        process = train_process(config)
        _wait_for_lines(audit, point, process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    last = train_process(config)
    out, _ = last.communicate(timeout=RUN_TIMEOUT_S)
    assert last.returncode == 0, out
    trained = Counter(TrainedEventLog.read(audit))
    assert trained == expected, (sum(trained.values()), total, list((trained - expected).items())[:5],
                                 list((expected - trained).items())[:5])


def test_two_ranks_under_torchrun_join_their_partitions_and_a_one_rank_restart_finishes_exactly_once(broker, tmp_path):
    from tests.integration.test_distributed import TorchrunJob

    _topics(broker)
    table = _feedback_log(5000, seed=9)
    replay_feedback(table, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), progress=False,
                    end_watermark_ms=_end_watermark(table))
    expected = _expected(table, fnw=True)
    config = write_daemon_toml(
        tmp_path / "c.toml", broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, sum(expected.values()), startup_timeout_s=5.0,
        extra_daemon=_feedback_toml("fnw"),
    )
    audit = tmp_path / "trained.txt"
    with TorchrunJob(config, 2, tmp_path / "first.log") as first:
        # Mid-stream and past a checkpoint: a joined batch can release thousands of impressions
        # at once, so 2,500 audit lines alone may come before the first checkpoint.
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(TrainedEventLog.read(audit)) < 2500 or not list((tmp_path / "checkpoints").glob("ckpt-*[0-9]")):
            assert first.process.poll() is None, first.output()[-3000:]
            assert time.monotonic() < deadline, "job made no progress"
            time.sleep(0.05)
        os.kill(first.pids[1], signal.SIGKILL)  # torchrun tears the job down
        first.wait(timeout=60)
    with TorchrunJob(config, 1, tmp_path / "second.log") as second:
        assert second.wait() == 0, second.output()[-3000:]
        out = second.output()
    assert "restored ckpt-" in out and "rank 0 of 1 reads partitions [0, 1, 2]" in out, out[-3000:]
    trained = Counter(TrainedEventLog.read(audit))
    assert trained == expected, (sum(trained.values()), list((trained - expected).items())[:5],
                                 list((expected - trained).items())[:5])
