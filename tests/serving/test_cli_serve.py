"""`inttower serve` as a user starts it: a real process on 127.0.0.1, answering, stopped by SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from index_sync.snapshot_files import SnapshotWriter
from stream.broker import free_port
from tests.conftest import REPO_ROOT
from tests.serving.test_service import LOG, _publish, new_live_index

CONFIG_TOML = """
[model]
hidden = [32, 32, 16]
embedding_dim = 8
heads = 2
head_dim = 8
"""


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_command_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    _publish(SnapshotWriter(index_dir, keep=3), new_live_index(), seed=1)
    (tmp_path / "c.toml").write_text(CONFIG_TOML)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "inttower.cli", "serve", "--index-dir", str(index_dir),
                                "--config", str(tmp_path / "c.toml"), "--port", str(port)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 60, None
        # Up is not ready: the server may answer 503 "no_index" until it has loaded the index.
        while time.monotonic() < deadline:
            try:
                health = _get(f"http://127.0.0.1:{port}/healthz")
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stdout.read()
            if health is not None and health[0] == 200:
                break
            time.sleep(0.2)
        assert health is not None and health[0] == 200 and health[1]["version"] == 1
        body = json.dumps({"user": LOG.column("user")[0].as_py(), "k": 5}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/retrieve", data=body)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.loads(response.read())["items"]) == 5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert "serving index version 1" in process.stdout.read()


def test_serve_refuses_a_missing_index_dir(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "inttower.cli", "serve", "--index-dir", str(tmp_path / "nope")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--index-dir" in done.stderr and "not a directory" in done.stderr
