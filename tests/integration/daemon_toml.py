"""The small daemon config the subprocess tests (single process and torchrun) write, and the process that runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def train_process(config: Path) -> subprocess.Popen:
    """``inttower train --config CONFIG`` as a child process, its output on a pipe."""
    return subprocess.Popen([sys.executable, "-m", "inttower.cli", "train", "--config", str(config)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def write_daemon_toml(
    path: Path, bootstrap: str, topic: str, dead_letters: str, workdir: Path, events: int,
    startup_timeout_s: float = 3.0, extra_daemon: str = "", client: str = "confluent",
) -> Path:
    """A tiny IntTower on ``topic`` that checkpoints every 1,000 events and audits into ``workdir``.

    ``client``: the default's, confluent; test_daemon.py's tests ask for kafka-python and
    test_consumer_confluent.py runs them again on confluent.
    """
    path.write_text(f"""
[model]
hidden = [32, 32, 16]
embedding_dim = 8
heads = 2
head_dim = 8
[train]
threads = 1
[stream]
client = "{client}"
bootstrap_servers = ["{bootstrap}"]
topic = "{topic}"
dead_letter_topic = "{dead_letters}"
max_batch_events = 256
session_timeout_ms = 2000
heartbeat_interval_ms = 500
request_timeout_ms = 10000
startup_timeout_s = {startup_timeout_s}
[monitoring]
port = 0
[daemon]
checkpoint_dir = "{workdir / 'checkpoints'}"
audit_log = "{workdir / 'trained.txt'}"
checkpoint_every_events = 1000
status_every_s = 1.0
stop_after_events = {events}
{extra_daemon}
""")
    return path
