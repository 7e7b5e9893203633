"""The daemon with its index: a separate reader process follows it; new items show up fast."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from index_sync.config import IndexSyncConfig
from index_sync.disk import latest_manifest
from inttower.config import AppConfig, DaemonConfig
from inttower.daemon import TrainingDaemon
from model.config import ModelConfig, TrainConfig
from monitoring.config import MonitoringConfig
from stream.broker import create_topic
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SMALL_MODEL = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
RUN_TIMEOUT_S = 120

READER_SCRIPT = """
import json, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np
from index_sync.disk import IndexReader
from index_sync.serving import IndexNotReadyError, Reader
from index_sync.snapshot_files import DiskSnapshots
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

directory, stop_file = Path(sys.argv[1]), Path(sys.argv[2])
config = ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8)
users = generate_synthetic_log(SyntheticLogConfig(events=200, seed=11))
reader = IndexReader(directory, poll_interval_s=0.05)
reader.start()
snapshots = DiskSnapshots(reader, lambda: build_model(config))
serve = Reader(FeatureEncoder(config.features), snapshots)
rng = np.random.default_rng(0)
seen, errors, calls = set(), [], 0
deadline = time.monotonic() + 150
while not stop_file.exists() and time.monotonic() < deadline:
    try:
        user = users.slice(int(rng.integers(200)), 1)
        snapshot = snapshots()
        scores = serve.score(user, rng.integers(1, 3000, 50))
        top = serve.retrieve(user, 10)
        if snapshot is not None and scores.version < snapshot.version.version:
            raise AssertionError("a result older than the snapshot it was asked from")
        seen.update([scores.version, top.version])
        calls += 1
    except IndexNotReadyError:
        time.sleep(0.02)
    except Exception as exc:
        errors.append(repr(exc))
time.sleep(0.5)
reader.maybe_reload()
final = snapshots()
reader.stop()
print(json.dumps({"seen": sorted(seen), "errors": errors[:5], "calls": calls,
                  "final": final.version.version if final else None, "refused": reader.refused_total}))
"""


def _app(stream, tmp_path, events, **index) -> AppConfig:
    return AppConfig(
        model=SMALL_MODEL, train=TrainConfig(threads=1), stream=stream,
        daemon=DaemonConfig(checkpoint_dir=str(tmp_path / "checkpoints"), stop_after_events=events, status_every_s=1.0),
        index=IndexSyncConfig(enabled=True, **index), monitoring=MonitoringConfig(port=0),
    )


def test_separate_reader_process_follows_the_trainers_versions(broker, stream_config, tmp_path):
    create_topic(broker.bootstrap, "clicks", 4)
    create_topic(broker.bootstrap, "clicks.dead-letter", 1)
    events = 40_000
    table = generate_synthetic_log(SyntheticLogConfig(events=events, seed=12))
    stream = stream_config(broker, topic="clicks", dead_letter_topic="clicks.dead-letter", max_batch_events=256)
    # Paced so the stream lasts ~10 s: long enough for 50+ syncs at 0.1 s.
    producer = threading.Thread(target=replay, args=(table, stream),
                                kwargs={"rate": 4000.0, "fmt": "arrow", "arrow_batch_events": 256, "progress": False})
    producer.start()
    index_dir, stop_file = tmp_path / "index", tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(index_dir), str(stop_file)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        app = _app(stream, tmp_path, events, sync_interval_s=0.1, full_refresh_interval_s=2.0, index_dir=str(index_dir))
        stop = threading.Event()
        watchdog = threading.Timer(RUN_TIMEOUT_S, stop.set)
        watchdog.start()
        daemon = TrainingDaemon(app, stop)
        daemon.run()
        watchdog.cancel()
        producer.join(timeout=30)
        # Let the last sync land before the reader stops.
        time.sleep(0.5)
        published = latest_manifest(index_dir).version
        stop_file.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert published >= 50, published
    assert result["errors"] == [] and result["refused"] == 0, (result, err[-2000:])
    assert len(result["seen"]) >= 10 and result["calls"] > 50, result
    assert result["final"] == published


def test_an_item_first_seen_mid_stream_is_served_within_one_sync(broker, stream_config, tmp_path):
    create_topic(broker.bootstrap, "clicks", 2)
    create_topic(broker.bootstrap, "clicks.dead-letter", 1)
    events = 16_000
    table = generate_synthetic_log(SyntheticLogConfig(events=events, seed=13))
    item_ids = table.column("item_id").to_numpy()
    first_half = set(item_ids[: events // 2].tolist())
    newcomer = next(int(i) for i in item_ids[events // 2 :] if int(i) not in first_half)
    stream = stream_config(broker, topic="clicks", dead_letter_topic="clicks.dead-letter", max_batch_events=256)
    sync_interval = 1.0
    app = _app(stream, tmp_path, events, sync_interval_s=sync_interval, full_refresh_interval_s=600.0)
    stop = threading.Event()
    daemon = TrainingDaemon(app, stop)
    seen_at: dict[str, float] = {}

    class FirstSighting:
        def on_batch(self, batch_table, results):
            if "trained" not in seen_at and newcomer in set(batch_table.column("item_id").to_pylist()):
                seen_at["trained"] = time.time()

    daemon.observers.append(FirstSighting())

    def watch():
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and "served" not in seen_at:
            snapshot = daemon.index_sync.snapshot if daemon.index_sync else None
            if snapshot is not None and snapshot.version.contains(np.array([newcomer]))[0]:
                seen_at["served"] = time.time()
                seen_at["version"] = snapshot.version.version
            time.sleep(0.005)

    producer = threading.Thread(target=replay, args=(table, stream), kwargs={"rate": 2000.0, "fmt": "arrow", "progress": False})
    watcher = threading.Thread(target=watch)
    producer.start()
    watcher.start()
    watchdog = threading.Timer(RUN_TIMEOUT_S, stop.set)
    watchdog.start()
    daemon.run()
    watchdog.cancel()
    producer.join(timeout=30)
    watcher.join(timeout=5)
    assert "served" in seen_at, "the new item never reached the index"
    report = next(r for r in daemon.index_sync.reports if r.version == seen_at["version"])
    freshness = seen_at["served"] - seen_at["trained"]
    assert freshness <= sync_interval + report.seconds + 0.05, (freshness, report)
