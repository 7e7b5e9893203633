"""A real Prometheus scrapes the daemon during a replay: every dashboard and alert query has data."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaProducer

from index_sync.config import IndexSyncConfig
from inttower.config import AppConfig, DaemonConfig
from inttower.daemon import TrainingDaemon
from model.config import ModelConfig, TrainConfig
from monitoring.config import MonitoringConfig
from stream.broker import create_topic, free_port
from stream.codec import JSON_HEADERS
from stream.config import FeedbackConfig
from stream.delays import DelayConfig, add_click_times
from stream.feedback_replay import replay_feedback
from stream.replay import replay
from serving.app import ServingService
from serving.config import ServingConfig
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import missing_system_package
from tests.monitoring.promql_expressions import alert_signals, dashboard_expressions
from tests.serving.service_thread import ServiceThread

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
READY_TIMEOUT_S = 20
RUN_S = 14  # long enough for several 1 s scrapes of a running daemon


def _query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _values(result: list) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


@pytest.fixture
def prometheus(tmp_path: Path):
    """Start Prometheus on a free port; ``start(target)`` writes its config and launches it."""
    if PROMETHEUS is None:
        missing_system_package(
            "prometheus not found on PATH (`make setup` installs it as root; otherwise: sudo apt-get install -y prometheus)")
    processes = []

    def start(target: str, serving_target: str | None = None) -> int:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        jobs = [("inttower", target)] + ([("inttower-serving", serving_target)] if serving_target else [])
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
            + "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{t}']\n" for job, t in jobs)
        )
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", "--storage.tsdb.retention.time=1d"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"),
        )
        processes.append(process)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1):
                    return port
            except OSError:
                time.sleep(0.1)
        raise AssertionError("Prometheus did not become ready")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _serving_client(server: ServiceThread, stop: threading.Event, user: dict, items: list[int]) -> None:
    """Requests of every kind against `inttower serve` while the daemon publishes versions."""
    while not stop.wait(0.1):
        server.request("/score", {"user": user, "candidates": items, "allow_unknown": True})
        server.request("/retrieve", {"user": user, "k": 5})
        server.request("/score", raw=b"{not json")


def test_every_dashboard_and_alert_query_returns_data_from_a_live_run(broker, stream_config, prometheus, tmp_path):
    create_topic(broker.bootstrap, "clicks", 2)
    create_topic(broker.bootstrap, "clicks.dead-letter", 1)
    table = generate_synthetic_log(SyntheticLogConfig(events=40_000, seed=21))
    stream = stream_config(broker, topic="clicks", dead_letter_topic="clicks.dead-letter", max_batch_events=256)
    metrics_port = free_port()
    app = AppConfig(
        model=ModelConfig(hidden=(32, 32, 16), embedding_dim=8, heads=2, head_dim=8), train=TrainConfig(threads=1),
        stream=stream, monitoring=MonitoringConfig(port=metrics_port, auc_windows=(200, 2000)),
        # Joined feedback: labelled events pass straight through, impressions wait for their clicks.
        feedback=FeedbackConfig(mode="joined", label_window_s=30.0),
        daemon=DaemonConfig(checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every_s=1.0, status_every_s=2.0),
        index=IndexSyncConfig(enabled=True, sync_interval_s=0.5, full_refresh_interval_s=3.0,
                              index_dir=str(tmp_path / "index")),
    )
    (tmp_path / "index").mkdir()
    service = ServingService(app.model, tmp_path / "index", ServingConfig(poll_interval_s=0.2))
    service.start()
    server = ServiceThread(service)
    prometheus_port = prometheus(f"127.0.0.1:{metrics_port}", f"127.0.0.1:{server.port}")
    stop = threading.Event()
    daemon = TrainingDaemon(app, stop)
    runner = threading.Thread(target=daemon.run)
    runner.start()

    def produce():
        bad = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for i in range(20):
            bad.send("clicks", value=b'{"event_id": "broken-%d"' % i, headers=list(JSON_HEADERS))
        bad.flush()
        bad.close()
        impressions = add_click_times(generate_synthetic_log(SyntheticLogConfig(events=3000, seed=22)),
                                      DelayConfig("exponential", mean_s=20.0))
        replay_feedback(impressions, stream, progress=False)
        replay(table, stream, rate=3000.0, fmt="arrow", arrow_batch_events=256, progress=False)

    producer = threading.Thread(target=produce)
    producer.start()
    items = [int(i) for i in table.column("item_id").to_numpy()[:20]]
    client = threading.Thread(target=_serving_client, args=(server, stop, table.column("user")[0].as_py(), items))
    client.start()
    try:
        time.sleep(RUN_S)
        queries = [("dashboard", e) for e in dashboard_expressions()] + [("alert " + n, e) for n, e in alert_signals()]
        empty = [(where, expr) for where, expr in queries if not _query(prometheus_port, expr)]
        assert not empty, f"{len(empty)} of {len(queries)} queries returned no data: {empty}"

        auc = _values(_query(prometheus_port, 'inttower_streaming_auc{window="2000"}'))
        assert auc and all(0.5 < v <= 1.0 for v in auc), auc
        lag = _values(_query(prometheus_port, "sum(inttower_consumer_lag_messages)"))
        assert lag and 0 <= lag[0] < 40_000, lag
        freshness = _values(_query(prometheus_port, "inttower_index_freshness_seconds"))
        assert freshness and 0 <= freshness[0] < 10, freshness
        p99 = _values(_query(prometheus_port, "histogram_quantile(0.99, sum by (le) "
                                               "(rate(inttower_train_step_duration_seconds_bucket[1m])))"))
        assert p99 and 0 < p99[0] < 2.5, p99
        dead = _values(_query(prometheus_port, "sum(inttower_events_dead_lettered_total)"))
        assert dead == [20.0], dead
        joined = _values(_query(prometheus_port, 'sum(inttower_feedback_clicks_total{outcome="joined"})'))
        assert joined and joined[0] > 0, joined
        late = _values(_query(prometheus_port, 'sum(inttower_feedback_clicks_total{outcome="late"})'))
        assert late and late[0] > 0, late  # exponential delays, mean 20 s, past a 30 s window
        served = _values(_query(prometheus_port, 'sum(inttower_serving_requests_total{code="200"})'))
        assert served and served[0] > 0, served
        assert _values(_query(prometheus_port, "inttower_serving_index_version")) >= [1.0]
    finally:
        stop.set()
        runner.join(timeout=60)
        producer.join(timeout=60)
        client.join(timeout=30)
        server.stop()
        service.close()
