"""`inttower fit` -> `inttower train --init-from` on the real broker: warm start, then crash and resume."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pytest
import torch

from model.audit import TrainedEventLog
from model.checkpoint import CheckpointStore
from model.warm_start import find_checkpoint
from stream.clicklog import write_click_log
from stream.config import StreamConfig
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import REPO_ROOT
from tests.integration.daemon_toml import write_daemon_toml
from tests.integration.daemon_toml import train_process
from tests.integration.test_daemon import DEAD_LETTERS, RUN_TIMEOUT_S, TOPIC, _topics, _wait_for_trained

pytestmark = pytest.mark.slow


def _trainer_state(checkpoint_path: Path) -> dict:
    return torch.load(io.BytesIO((checkpoint_path / "trainer-inttower.pt").read_bytes()), weights_only=True)


def test_fit_then_warm_started_daemon_killed_resumes_from_its_own_checkpoint_exactly_once(broker, tmp_path):
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=7000, seed=5))
    split = int(table.column("ts")[3000].as_py())  # history: events before this time; the stream: the rest
    history = table.filter(pa.compute.less(table.column("ts"), split))
    live = table.filter(pa.compute.greater_equal(table.column("ts"), split))
    write_click_log(history, tmp_path / "history.parquet")
    replay(live, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), fmt="arrow", arrow_batch_events=256, progress=False)
    config = write_daemon_toml(tmp_path / "c.toml", broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, live.num_rows)
    config.write_text(config.read_text().replace("[train]\nthreads = 1", "[train]\nthreads = 1\nmax_epochs = 2\nbatch_size = 256"))

    fitted = subprocess.run([sys.executable, "-m", "inttower.cli", "fit", str(tmp_path / "history.parquet"), "--config", str(config),
                             "--out", str(tmp_path / "fit")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert fitted.returncode == 0, fitted.stderr
    fit_state = _trainer_state(find_checkpoint(tmp_path / "fit").path)

    audit = tmp_path / "trained.txt"
    first = subprocess.Popen([sys.executable, "-m", "inttower.cli", "train", "--config", str(config), "--init-from", str(tmp_path / "fit")],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_trained(audit, 2500, first)  # past its first own checkpoint (every 1,000 events)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    out_first = first.stdout.read()
    assert "warm start from" in out_first and "start after the fit's watermark" in out_first

    own = CheckpointStore(tmp_path / "checkpoints", keep=10).all()
    assert own, "the warm-started daemon wrote no checkpoint of its own"
    first_own = _trainer_state(own[0].path)
    assert first_own["steps"] > fit_state["steps"]  # trained on from the fit's step count, not from 0
    assert any(not torch.equal(first_own["model"][k], fit_state["model"][k]) for k in fit_state["model"])

    second = train_process(config)  # the config alone: init_from is not in it, the daemon's checkpoint decides
    out, _ = second.communicate(timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, out
    assert "restored ckpt-" in out and "warm start" not in out
    trained = Counter(TrainedEventLog.read(audit))
    assert trained == Counter(live.column("event_id").to_pylist()), (len(trained), sum(trained.values()))


def test_restart_with_init_from_still_restores_the_daemons_own_checkpoint(broker, tmp_path):
    """--init-from only matters while checkpoint_dir is empty: a crash never rolls back to the fit."""
    _topics(broker)
    table = generate_synthetic_log(SyntheticLogConfig(events=3000, seed=6))
    write_click_log(table.slice(0, 1500), tmp_path / "history.parquet")
    replay(table.slice(1500), StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), fmt="arrow",
           arrow_batch_events=256, progress=False)
    config = write_daemon_toml(tmp_path / "c.toml", broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, 1500)
    config.write_text(config.read_text().replace("[train]\nthreads = 1", "[train]\nthreads = 1\nmax_epochs = 1\nbatch_size = 256"))
    run = lambda *a: subprocess.run([sys.executable, "-m", "inttower.cli", *a], cwd=REPO_ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=RUN_TIMEOUT_S)
    assert run("fit", str(tmp_path / "history.parquet"), "--config", str(config), "--out", str(tmp_path / "fit")).returncode == 0
    done = run("train", "--config", str(config), "--init-from", str(tmp_path / "fit"))
    assert done.returncode == 0 and "warm start from" in done.stdout + done.stderr
    again = run("train", "--config", str(config), "--init-from", str(tmp_path / "fit"))
    assert again.returncode == 0
    log = again.stdout + again.stderr
    assert "restored ckpt-" in log and "warm start" not in log
