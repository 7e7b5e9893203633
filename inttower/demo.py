"""`make demo`: the whole product on one machine, on the embedded defaults.

Starts the embedded Kafka-protocol broker, writes the synthetic click log, replays it
into a topic while the training daemon consumes it with IntTower and the two-tower
baseline side by side on the same batches, then writes ``report.png`` (streaming AUC
and logloss against event time, the preference shift marked) and ``summary.json``, and
stops everything it started.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

from inttower.commands import write_synthetic_log
from inttower.config import AppConfig
from inttower.daemon import TrainingDaemon
from monitoring.report import plot_quality_timeline
from stream.broker import EmbeddedBroker, create_topic
from stream.clicklog import read_click_log
from stream.replay import replay


def _mean(points: list[dict], key: str, after_ms: int | None = None, before_ms: int | None = None) -> float:
    values = [
        p[key] for p in points
        if (after_ms is None or p["event_ts_ms"] >= after_ms) and (before_ms is None or p["event_ts_ms"] < before_ms)
        and p[key] == p[key]  # drop NaN (window not yet holding both classes)
    ]
    return sum(values) / len(values) if values else float("nan")


def _index_summary(daemon: TrainingDaemon) -> dict | None:
    sync = daemon.index_sync
    if sync is None or sync.snapshot is None:
        return None
    syncs = [r for r in sync.reports if not r.full]
    return {
        "version": sync.snapshot.version.version,
        "items": sync.snapshot.version.item_count,
        "syncs": len(syncs),
        "mean_sync_s": round(sum(r.seconds for r in syncs) / max(len(syncs), 1), 3),
        "max_handoff_ms": round(1e3 * max((r.handoff_seconds for r in sync.reports), default=0.0), 2),
    }


def run_demo(config: AppConfig, workdir: Path, events: int | None = None) -> dict:
    demo = config.demo
    events = events or demo.events
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "synthetic.parquet"
    synthetic = dataclasses.replace(config.data.synthetic, events=events)
    write_synthetic_log(log_path, dataclasses.replace(config, data=dataclasses.replace(config.data, synthetic=synthetic)))
    table = read_click_log(log_path)
    shift_index = min(int(events * synthetic.shift_at), events - 1)
    shift_ts = int(table.column("ts")[shift_index].as_py()) if synthetic.shift_at < 1.0 else None

    started = time.monotonic()
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        stream = dataclasses.replace(config.stream, bootstrap_servers=(broker.bootstrap,), topic=demo.topic,
                                     dead_letter_topic=f"{demo.topic}.dead-letter", max_batch_events=demo.batch_events)
        create_topic(broker.bootstrap, stream.topic, demo.partitions)
        create_topic(broker.bootstrap, stream.dead_letter_topic, 1)
        print(f"broker on {broker.bootstrap} (pid {broker.pid}); topic {stream.topic} with {demo.partitions} partitions")
        daemon_config = dataclasses.replace(
            config.daemon,
            checkpoint_dir=str(workdir / "checkpoints"),
            shadow_models=demo.models[1:],
            stop_after_events=events,
            history_every_events=demo.history_every_events,
        )
        index = dataclasses.replace(config.index, enabled=True, index_dir=str(workdir / "index"))
        shutil.rmtree(workdir / "index", ignore_errors=True)
        monitoring = dataclasses.replace(config.monitoring, port=0)  # any free port: the demo may run beside a daemon
        app = dataclasses.replace(config, stream=stream, daemon=daemon_config, index=index, monitoring=monitoring,
                                  model=dataclasses.replace(config.model, kind=demo.models[0]))
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)  # a demo always starts from scratch
        stop = threading.Event()
        producer_error: list[BaseException] = []

        def produce() -> None:
            try:
                summary = replay(table, stream, rate=None, speedup=None, fmt=demo.format,
                                 arrow_batch_events=demo.batch_events, progress=False)
                print(f"replay done: {summary.events} events in {summary.seconds:.1f} s ({summary.events_per_s:.0f}/s, {demo.format})")
            except BaseException as exc:  # surfaced below; the daemon is stopped
                producer_error.append(exc)
                stop.set()

        producer = threading.Thread(target=produce, name="replay", daemon=True)
        producer.start()
        timer = threading.Timer(demo.timeout_s, stop.set)
        timer.start()
        daemon = TrainingDaemon(app, stop)
        try:
            result = daemon.run()
        finally:
            timer.cancel()
            producer.join(timeout=30)
        if producer_error:
            raise producer_error[0]
    seconds = time.monotonic() - started

    histories = {slot.name: slot.history for slot in daemon.slots}
    report = plot_quality_timeline(histories, workdir / "report.png", marker_ts_ms=shift_ts,
                                   title=f"Prequential quality on {events:,} synthetic events")
    summary = {
        "events": result.events,
        "seconds": round(seconds, 1),
        "events_per_s": round(result.events / max(result.seconds, 1e-9), 1),
        "format": demo.format,
        "partitions": demo.partitions,
        "dead_lettered": result.dead_lettered,
        "checkpoints": result.checkpoints,
        "index": _index_summary(daemon),
        "shift_event_ts_ms": shift_ts,
        "models": {
            name: {
                "final_auc": round(points[-1]["auc"], 4) if points else None,
                "final_logloss": round(points[-1]["logloss"], 4) if points else None,
                "mean_auc_before_shift": round(_mean(points, "auc", before_ms=shift_ts), 4),
                "mean_auc_after_shift": round(_mean(points, "auc", after_ms=shift_ts), 4),
                "mean_logloss": round(_mean(points, "logloss"), 4),
            }
            for name, points in histories.items()
        },
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo done in {seconds:.0f} s: {result.events} events; report {report}; summary {workdir / 'summary.json'}")
    if summary["index"]:
        print(f"  item index: version {summary['index']['version']}, {summary['index']['items']} items, "
              f"{summary['index']['syncs']} syncs (mean {summary['index']['mean_sync_s']} s) in {workdir / 'index'}")
    for name, m in summary["models"].items():
        print(f"  {name:<10} streaming AUC {m['final_auc']}, logloss {m['final_logloss']} "
              f"(mean AUC before shift {m['mean_auc_before_shift']}, after {m['mean_auc_after_shift']})")
    return summary
