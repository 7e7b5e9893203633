"""Fixtures for tests against real servers started as child processes on 127.0.0.1.

``broker``: a fresh Tansu broker (Kafka protocol, memory storage) per test, on a free
port; ``broker.bootstrap`` is the ``"127.0.0.1:PORT"`` for clients, ``broker.pause()`` /
``broker.resume()`` freeze and thaw it (SIGSTOP/SIGCONT: the way to simulate an
unreachable broker without losing its in-memory data), and it is stopped by PID after the
test (SIGTERM, then SIGKILL) even if the test fails. Its log is ``broker.log_path``, in
the test's tmp_path. Starting one takes ~50 ms, so per-test brokers keep tests isolated.

``module_broker``: the same, shared by a test module (use distinct topic names).

``stream_config``: a factory for `StreamConfig`s pointing at a broker with test-friendly
timings (group session 2000 ms / heartbeat 500 ms: the group join takes about half the
session timeout on Tansu; a short start-up timeout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker
from stream.config import StreamConfig

#: Group timings for tests (production defaults are 6000/1000).
TEST_SESSION_TIMEOUT_MS = 2000
TEST_HEARTBEAT_INTERVAL_MS = 500
TEST_REQUEST_TIMEOUT_MS = 10_000
TEST_STARTUP_TIMEOUT_S = 5.0


def _started(log_path: Path) -> EmbeddedBroker:
    return EmbeddedBroker(log_path=log_path).start()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A fresh Tansu broker for one test; stopped by PID afterwards."""
    server = _started(tmp_path / "tansu.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One Tansu broker shared by a test module; stopped by PID after the module."""
    server = _started(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stream_config() -> Callable[..., StreamConfig]:
    """``stream_config(broker, **changes)``: a StreamConfig for ``broker`` with test timings."""

    def make(server: EmbeddedBroker, **changes: object) -> StreamConfig:
        base = StreamConfig(
            bootstrap_servers=(server.bootstrap,),
            client="kafka-python",  # test_consumer_confluent.py runs these tests again on confluent, the default
            session_timeout_ms=TEST_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=TEST_HEARTBEAT_INTERVAL_MS,
            request_timeout_ms=TEST_REQUEST_TIMEOUT_MS,
            startup_timeout_s=TEST_STARTUP_TIMEOUT_S,
        )
        return dataclasses.replace(base, **changes)

    return make
