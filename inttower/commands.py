"""What each CLI command does, wired from the packages; no model or stream logic here."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa

from inttower.config import AppConfig
from inttower.errors import UserError
from stream.clicklog import write_click_log
from stream.datasets import data_home, download_movielens
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log
from stream.table_import import import_table


def import_movielens_log(path: Path, out: Path, config: AppConfig) -> None:
    started = time.perf_counter()
    _write_imported(import_movielens(path, config.data.movielens), out, started)


def import_table_log(path: Path, out: Path, config: AppConfig) -> None:
    """`inttower data table`: a user's CSV / Parquet / JSON-lines log, mapped by ``[data.table]``."""
    started = time.perf_counter()
    _write_imported(import_table(path, config.data.table), out, started)


def _write_imported(table: pa.Table, out: Path, started: float) -> None:
    write_click_log(table, out)
    positives = sum(table.column("label").to_pylist())
    print(
        f"wrote {out}: {table.num_rows} events, {positives / max(table.num_rows, 1):.1%} positive, "
        f"{time.perf_counter() - started:.1f} s"
    )


def download_and_import_movielens(name: str, out: Path, config: AppConfig) -> None:
    """`inttower data movielens --download NAME`: fetch into the data home, then import."""
    folder = download_movielens(name)
    print(f"{name}: {folder} (data home {data_home()})")
    import_movielens_log(folder, out, config)


def run_local_broker(config: AppConfig, port: int, partitions: int) -> None:
    """`inttower broker`: Tansu on 127.0.0.1:``port`` until SIGINT/SIGTERM, with the config's topics."""
    from stream.broker import EmbeddedBroker, create_topic, port_accepts

    if port_accepts("127.0.0.1", port):
        raise UserError(f"127.0.0.1:{port} is already in use (another broker?); choose one with --port")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker = EmbeddedBroker(port=port)
    try:
        broker.start()
    except RuntimeError as exc:  # Tansu exited (a privileged port, ...) or never listened
        raise UserError(f"the local broker did not start on 127.0.0.1:{port}: {exc}") from None
    try:
        stream = config.stream  # a plaintext local broker: the config's security settings are not for it
        create_topic(broker.bootstrap, stream.topic, partitions)
        create_topic(broker.bootstrap, stream.dead_letter_topic, 1)
        print(
            f"broker listening on {broker.bootstrap} (Tansu pid {broker.pid}, log {broker.log_path})\n"
            f"topics: {stream.topic} ({partitions} partitions), {stream.dead_letter_topic} (1)\n"
            "memory storage: topics, messages and committed offsets are gone when it stops; "
            "production runs use Apache Kafka (docker/). Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                raise UserError(f"the broker exited unexpectedly; its log: {broker.log_path}")
    finally:
        broker.stop()
    print("broker stopped")


def write_synthetic_log(out: Path, config: AppConfig, events: int | None = None, seed: int | None = None) -> None:
    started = time.perf_counter()
    options = config.data.synthetic
    overrides = {k: v for k, v in {"events": events, "seed": seed}.items() if v is not None}
    table = generate_synthetic_log(dataclasses.replace(options, **overrides))
    write_click_log(table, out)
    print(f"wrote {out}: {table.num_rows} events, {time.perf_counter() - started:.1f} s")
