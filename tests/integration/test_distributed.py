"""Multi-worker training under torchrun (gloo, CPU) against a real broker: exactly once, identical replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Self

import pytest

from model.audit import TrainedEventLog
from model.checkpoint import CheckpointStore
from stream.broker import create_topic, free_port
from stream.config import StreamConfig
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import REPO_ROOT
from tests.integration.daemon_toml import write_daemon_toml

pytestmark = pytest.mark.slow  # ~60 s: each job start imports torch in every rank on 2 cores

TOPIC, DEAD_LETTERS, PARTITIONS = "clicks", "clicks.dead-letter", 4
JOB_TIMEOUT_S = 120
START_TIMEOUT_S = 60


def _produce(broker, events: int, seed: int) -> Counter:
    create_topic(broker.bootstrap, TOPIC, PARTITIONS)
    create_topic(broker.bootstrap, DEAD_LETTERS, 1)
    table = generate_synthetic_log(SyntheticLogConfig(events=events, seed=seed))
    replay(table, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), fmt="arrow",
           arrow_batch_events=256, progress=False)
    return Counter(table.column("event_id").to_pylist())


def _config(tmp_path: Path, broker, name: str, events: int) -> Path:
    digests = tmp_path / f"digests-{name}"
    return write_daemon_toml(tmp_path / f"{name}.toml", broker.bootstrap, TOPIC, DEAD_LETTERS, tmp_path, events,
                             startup_timeout_s=5.0, extra_daemon=f'parameter_digest_dir = "{digests}"')


class TorchrunJob:
    """``torchrun --nproc-per-node N -m inttower.cli train``; every process it started is killed by PID on exit."""

    def __init__(self, config: Path, ranks: int, log_path: Path) -> None:
        self.ranks, self.log_path = ranks, log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - the job's output, closed by kill()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                   "-m", "inttower.cli", "train", "--config", str(config)]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.pids = self._rank_pids()

    def _rank_pids(self) -> dict[int, int]:
        """Workers run in sessions of their own: find them as torchrun's children, by their RANK."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = {}
            for child in _children(self.process.pid):
                try:
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                rank = next((e[5:] for e in environ if e.startswith(b"RANK=")), None)
                if rank is not None:
                    found[int(rank)] = child
            if len(found) == self.ranks:
                return found
            assert self.process.poll() is None, self.output()
            time.sleep(0.1)
        raise AssertionError(f"torchrun did not start {self.ranks} ranks: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"job still running after {timeout} s: {self.output()[-3000:]}") from None

    def kill(self) -> None:
        for pid in (*self.pids.values(), self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children


def _wait_for_trained(audit: Path, count: int, job: TorchrunJob) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(TrainedEventLog.read(audit)) < count:
        assert job.process.poll() is None, job.output()[-3000:]
        assert time.monotonic() < deadline, "job made no progress"
        time.sleep(0.05)


def _digests(directory: Path, rank: int) -> list[str]:
    return (directory / f"digests-rank{rank}.txt").read_text().splitlines()


def _assert_identical_replicas(directory: Path, complete: bool = True) -> None:
    first, second = _digests(directory, 0), _digests(directory, 1)
    if not complete:  # a killed rank may be one step behind
        first, second = first[: len(second)], second[: len(first)]
    assert first and first == second, (len(first), len(second))


def test_two_ranks_train_every_event_once_with_identical_weights(broker, tmp_path):
    events = 6000
    produced = _produce(broker, events, seed=11)
    with TorchrunJob(_config(tmp_path, broker, "run", events), 2, tmp_path / "run.log") as job:
        assert job.wait() == 0, job.output()[-3000:]
        out = job.output()
    assert "rank 0 of 2 reads partitions [0, 2]" in out and "rank 1 of 2 reads partitions [1, 3]" in out
    assert f"stopped after {events} events" in out
    trained = Counter(TrainedEventLog.read(tmp_path / "trained.txt"))
    assert trained == produced, (len(trained), sum(trained.values()))
    # More steps than one rank's share of batches would give: both ranks stepped together.
    _assert_identical_replicas(tmp_path / "digests-run")
    assert len(_digests(tmp_path / "digests-run", 0)) >= events // (2 * 256)
    offsets = CheckpointStore(tmp_path / "checkpoints", 3).latest().metadata["offsets"]
    assert sorted(offsets) == ["0", "1", "2", "3"]


def test_killed_rank_resumes_exactly_and_one_rank_resumes_a_two_rank_checkpoint(broker, tmp_path):
    events = 6000
    produced = _produce(broker, events, seed=12)
    audit = tmp_path / "trained.txt"

    with TorchrunJob(_config(tmp_path, broker, "first", events), 2, tmp_path / "first.log") as first:
        _wait_for_trained(audit, 1500, first)
        os.kill(first.pids[1], signal.SIGKILL)  # torchrun tears the job down
        assert first.wait(timeout=60) != 0
    _assert_identical_replicas(tmp_path / "digests-first", complete=False)

    with TorchrunJob(_config(tmp_path, broker, "second", events), 2, tmp_path / "second.log") as second:
        _wait_for_trained(audit, 3500, second)
        second.process.send_signal(signal.SIGTERM)  # torchrun forwards it: the ranks agree to stop
        second.wait(timeout=60)
        out = second.output()
    assert "restored ckpt-" in out and "stopped after" in out, out[-3000:]  # a clean, collective stop
    _assert_identical_replicas(tmp_path / "digests-second", complete=False)

    with TorchrunJob(_config(tmp_path, broker, "third", events), 1, tmp_path / "third.log") as third:
        assert third.wait() == 0, third.output()[-3000:]
        out = third.output()
    assert "restored ckpt-" in out and "rank 0 of 1 reads partitions [0, 1, 2, 3]" in out, out[-3000:]
    trained = Counter(TrainedEventLog.read(audit))
    assert trained == produced, (len(trained), sum(trained.values()), max(trained.values()))
