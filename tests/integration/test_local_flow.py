"""The README's local flow as a user runs it: `inttower broker`, `inttower train`, `inttower replay`.

Each command is a real subprocess, as in three terminals; the log is a user's own CSV with
string ids (hex device ids, ASIN-like ad ids), imported with `inttower data table`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient

from index_sync.disk import IndexReader, latest_manifest
from index_sync.serving import Reader
from index_sync.snapshot_files import DiskSnapshots, keys_file_name
from inttower.config import load_config
from model.build import build_model
from model.features import FeatureEncoder
from stream.clicklog import read_click_log
from stream.broker import free_port, port_accepts
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

EVENTS = 600
START_TIMEOUT_S = 30
RUN_TIMEOUT_S = 180


def _inttower(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "inttower.cli", *args], cwd=kwargs.pop("cwd"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs,
    )


def _finish(process: subprocess.Popen, timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{process.args} did not finish in {timeout_s} s: {out} {err}")
    return process.returncode, out, err


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_accepts("127.0.0.1", port):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"nothing listening on {port} after {START_TIMEOUT_S} s"
        time.sleep(0.1)


def _write_user_csv(path: Path, rows: int) -> None:
    """An Avazu-shaped log: hex device ids as users, ASIN-like ad ids as items, YYMMDDHH hours."""
    rng = np.random.default_rng(0)
    devices = [f"{x:08x}" for x in rng.integers(0, 2**32, 40)]
    ads = [f"B0{x:08d}" for x in rng.integers(0, 10**8, 25)]
    lines = ["id,click,hour,device_ip,device_type,ad_id,ad_size"]
    for i in range(rows):
        user, ad = rng.integers(0, len(devices)), rng.integers(0, len(ads))
        click = int(rng.random() < (0.6 if (user + ad) % 3 == 0 else 0.1))
        lines.append(f"{10**19 + i},{click},{14102100 + i // 100},{devices[user]},{user % 3},{ads[ad]},{ad % 4}")
    path.write_text("\n".join(lines) + "\n")


def _write_config(path: Path, bootstrap: str, workdir: Path, metrics_port: int = 0) -> Path:
    path.write_text(f"""
[model]
hidden = [32, 32, 16]
embedding_dim = 8
heads = 2
head_dim = 8
[[model.features]]
name = "device_ip"
kind = "categorical"
tower = "user"
buckets = 1000
[[model.features]]
name = "device_type"
kind = "categorical"
tower = "user"
buckets = 16
[[model.features]]
name = "ad_id"
kind = "categorical"
tower = "item"
buckets = 1000
[[model.features]]
name = "ad_size"
kind = "categorical"
tower = "item"
buckets = 16
[train]
threads = 1
[stream]
bootstrap_servers = ["{bootstrap}"]
topic = "my-clicks"
dead_letter_topic = "my-clicks.dead-letter"
max_batch_events = 128
session_timeout_ms = 2000
heartbeat_interval_ms = 500
request_timeout_ms = 10000
startup_timeout_s = 10.0
[monitoring]
port = {metrics_port}
[daemon]
checkpoint_dir = "{workdir / 'checkpoints'}"
status_every_s = 1.0
stop_when_idle_s = 4.0  # after the replay: a few index syncs, then it stops by itself
[index]
enabled = true
sync_interval_s = 0.5
index_dir = "{workdir / 'index'}"
[data.table]
event_id_column = "id"
time_column = "hour"
time_format = "%y%m%d%H"
user_id_column = "device_ip"
item_id_column = "ad_id"
label_column = "click"
user_fields = ["device_ip", "device_type"]
item_fields = ["ad_id", "ad_size"]
""")
    return path


@pytest.fixture
def local_broker(tmp_path: Path):
    """`inttower broker` in its own 'terminal'; stopped with SIGINT (Ctrl-C) after the test."""
    port = free_port()
    config = _write_config(tmp_path / "config.toml", f"127.0.0.1:{port}", tmp_path)
    process = _inttower("broker", "--port", str(port), "--partitions", "2", "--config", str(config), cwd=tmp_path)
    try:
        _wait_for_port(port, process)
        yield port, config, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_broker_command_creates_the_config_topics_and_stops_on_ctrl_c(local_broker) -> None:
    port, _, process = local_broker
    deadline = time.monotonic() + START_TIMEOUT_S
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
    try:
        while not {"my-clicks", "my-clicks.dead-letter"} <= set(admin.list_topics()):
            assert time.monotonic() < deadline, admin.list_topics()
            time.sleep(0.2)
        assert len(admin.describe_topics(["my-clicks"])[0]["partitions"]) == 2
    finally:
        admin.close()
    os.killpg(process.pid, signal.SIGINT)
    code, out, _ = _finish(process, 20)
    assert code == 0
    assert f"broker listening on 127.0.0.1:{port}" in out and "broker stopped" in out
    assert not port_accepts("127.0.0.1", port)  # the Tansu child is gone too


def test_second_broker_on_a_taken_port_is_one_line(local_broker, tmp_path: Path) -> None:
    port, _, _ = local_broker
    code, _, err = _finish(_inttower("broker", "--port", str(port), cwd=tmp_path), 60)
    assert code == 2 and err.strip().count("\n") == 0 and "already in use" in err, err


def test_import_train_replay_with_string_ids(local_broker, tmp_path: Path) -> None:
    port, config, _ = local_broker
    _write_user_csv(tmp_path / "my_log.csv", EVENTS)
    code, out, err = _finish(_inttower("data", "table", "my_log.csv", "runs/my_log.parquet", "--config", str(config), cwd=tmp_path), 120)
    assert code == 0, err
    assert f"wrote runs/my_log.parquet: {EVENTS} events" in out

    train = _inttower("train", "--config", str(config), cwd=tmp_path)
    try:
        code, out, err = _finish(_inttower("replay", "runs/my_log.parquet", "--topic", "my-clicks", "--config", str(config), cwd=tmp_path), 120)
        assert code == 0, err
        code, out, err = _finish(train, RUN_TIMEOUT_S)
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
    assert code == 0, err
    assert f"stopped after {EVENTS} events" in out and "dead-lettered 0" in out, out
    manifest = latest_manifest(tmp_path / "index")
    assert manifest is not None and manifest.version >= 1
    assert (tmp_path / "index" / keys_file_name(manifest.version)).exists()

    # A serving process on the index directory answers in the log's own (string) ids.
    app = load_config(config)
    reader = IndexReader(tmp_path / "index")
    reader.maybe_reload()
    serve = Reader(FeatureEncoder(app.model.features), DiskSnapshots(reader, lambda: build_model(app.model)))
    user = read_click_log(tmp_path / "runs" / "my_log.parquet").slice(0, 1)
    top = serve.retrieve(user, 5)
    assert len(top.item_ids) == 5 and all(isinstance(i, str) and i.startswith("B0") for i in top.item_ids), top
    scores = serve.score(user, top.item_ids)
    assert scores.known.all() and scores.item_ids == top.item_ids


def test_metrics_port_in_use_is_one_line(local_broker, tmp_path: Path) -> None:
    port, _, _ = local_broker
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _write_config(tmp_path / "taken.toml", f"127.0.0.1:{port}", tmp_path, metrics_port=taken.getsockname()[1])
        code, _, err = _finish(_inttower("train", "--config", str(config), cwd=tmp_path), 120)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot serve metrics" in lines[0] and "[monitoring] port" in lines[0], err
