"""What each CLI command does, wired from the packages; no model or stream logic here."""

from __future__ import annotations

import dataclasses
import datetime
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa

from inttower.config import AppConfig
from inttower.errors import UserError
from stream.clicklog import ClickLogScan, write_click_log
from stream.event_time import parse_event_time
from stream.datasets import data_home, download_movielens
from stream.movielens import import_movielens
from stream.delays import add_click_times, delay_quantiles_s
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


def write_synthetic_log(
    out: Path, config: AppConfig, events: int | None = None, seed: int | None = None, delays: bool = False,
) -> None:
    """`inttower data synthetic`; with ``delays`` a feedback log (impressions with later click times, `stream.delays`)."""
    started = time.perf_counter()
    options = config.data.synthetic
    overrides = {k: v for k, v in {"events": events, "seed": seed}.items() if v is not None}
    table = generate_synthetic_log(dataclasses.replace(options, **overrides))
    note = ""
    if delays:
        table = add_click_times(table, config.data.delays)
        p50, p90, p99 = delay_quantiles_s(table, (0.5, 0.9, 0.99))
        note = f"; click delays p50 {p50:.0f} s, p90 {p90:.0f} s, p99 {p99:.0f} s (replay sends impressions and clicks)"
    write_click_log(table, out)
    print(f"wrote {out}: {table.num_rows} events, {time.perf_counter() - started:.1f} s{note}")


def _time_range(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    try:
        return (None if since is None else parse_event_time(since)), (None if until is None else parse_event_time(until))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def fit_history(log: Path, out: Path, config: AppConfig, until: str | None, since: str | None) -> None:
    """`inttower fit`: batch-fit the config's model on a logged history, save a checkpoint to warm-start from."""
    from model.batch_fit import fit_log, save_fit

    since_ms, until_ms = _time_range(since, until)
    scan = ClickLogScan(log, config.train.fit_chunk_events, since_ms, until_ms)
    done = fit_log(scan, config.model, config.train, config.online, progress=True)
    written = save_fit(done, str(out), config.model, scan)
    q, r = done.validation, done.result
    print(f"fitted {config.model.kind} on {done.train_events} events in {done.seconds:.0f} s: "
          f"kept epoch {r.best_epoch} of {r.epochs_run} (validation AUC by epoch: {', '.join(f'{a:.4f}' for a in r.validation_auc)})")
    print(_quality_table({config.model.kind: q}, f"held-out latest {q.events} events (used for early stopping)"))
    print(f"checkpoint {written.path} (watermark {_show_time(done.watermark_ms)}); "
          f"start the daemon from it with: inttower train --init-from {out}")


def evaluate_checkpoint(checkpoint: Path, log: Path, config: AppConfig, since: str | None, until: str | None) -> None:
    """`inttower eval`: AUC, logloss and calibration of a checkpoint's models on a log's events."""
    from tqdm import tqdm

    from model.batch_fit import evaluate_log
    from model.warm_start import WarmStartError, find_checkpoint

    since_ms, until_ms = _time_range(since, until)
    scan = ClickLogScan(log, config.train.fit_chunk_events, since_ms, until_ms)
    try:
        found = find_checkpoint(checkpoint)
        qualities = evaluate_log(found, scan, config.model, config.train.device,
                                 progress_chunks=lambda chunks: tqdm(chunks, desc="scoring", unit="chunk", leave=False))
    except WarmStartError as exc:
        raise UserError(str(exc)) from None
    print(_quality_table(qualities, f"{found.path} on {log}" + (f" from {_show_time(since_ms)}" if since_ms is not None else "")))


def _quality_table(qualities: dict, title: str) -> str:
    rows = [f"{title}", "| model | AUC | logloss | calibration (predicted / observed clicks) | events | positives |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {kind} | {q.auc:.4f} | {q.logloss:.4f} | {q.calibration:.3f} | {q.events} | {q.positives} |" for kind, q in qualities.items()]
    return "\n".join(rows)


def _show_time(ms: int) -> str:
    return f"{ms} ({datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC)"
