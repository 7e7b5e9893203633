"""Online (prequential) IntTower vs Two-Tower on ML-100K replayed through Kafka.

    python -m bench.online_movielens [--seeds 3] [--data PATH]

Replays the MovieLens click log in event-time order into a one-partition topic on the
embedded broker (one partition keeps the global time order), then for each seed runs
the training daemon with IntTower and Two-Tower side by side on the same batches. Each
event is scored before the model trains on it (test-then-train), and the AUC and
logloss over all those predictions are the prequential figures. For reference, the
same models are trained offline for several epochs on the first 80% by time and tested
on the last 20%.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from inttower.config import load_config
from inttower.daemon import TrainingDaemon
from model.experiment import split_rows, train_and_test
from model.features import FeatureEncoder
from monitoring.quality import log_loss, roc_auc
from stream.broker import EmbeddedBroker, create_topic
from stream.datasets import require_movielens
from stream.movielens import import_movielens
from stream.replay import replay

REPO = Path(__file__).resolve().parents[1]
MODELS = ("inttower", "two_tower")
STREAM_BATCH = 256  # ML-100K has 73k events: 2048-event batches would give only 36 steps


class PredictionRecorder:
    """Keeps every prequential prediction of every model (a BatchObserver)."""

    def __init__(self) -> None:
        self.labels: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
        self.probabilities: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}

    def on_batch(self, table, results) -> None:
        for name, result in results.items():
            self.labels[name].append(result.labels)
            self.probabilities[name].append(result.probabilities)

    def scores(self, name: str) -> tuple[float, float, int]:
        y, p = np.concatenate(self.labels[name]), np.concatenate(self.probabilities[name])
        return roc_auc(y, p), log_loss(y, p), y.size


def _fmt(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ML-100K folder (default: $INTTOWER_DATA/ml-100k or the download cache)")
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens.toml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--offline-epochs", type=int, default=10)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    folder = require_movielens("ml-100k", args.data)
    table = import_movielens(folder, config.data.movielens)
    print(f"{folder}: {table.num_rows} events in time order; stream batches of {STREAM_BATCH}")

    online: dict[str, dict[str, list[float]]] = {m: {"auc": [], "logloss": []} for m in MODELS}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        topic = "movielens"
        create_topic(broker.bootstrap, topic, 1)
        stream = dataclasses.replace(config.stream, bootstrap_servers=(broker.bootstrap,), topic=topic,
                                     dead_letter_topic=f"{topic}.dead-letter", max_batch_events=STREAM_BATCH)
        summary = replay(table, stream, fmt="arrow", arrow_batch_events=STREAM_BATCH, progress=False)
        print(f"replayed {summary.events} events into {topic} ({summary.events_per_s:.0f}/s)")
        for seed in range(args.seeds):
            recorder = PredictionRecorder()
            daemon_config = dataclasses.replace(
                config.daemon, checkpoint_dir=f"{tmp}/ckpt-{seed}", shadow_models=MODELS[1:],
                stop_after_events=table.num_rows, status_every_s=30.0,
            )
            app = dataclasses.replace(
                config, stream=dataclasses.replace(stream, group_id=f"bench-{seed}"), daemon=daemon_config,
                model=dataclasses.replace(config.model, kind=MODELS[0]), train=dataclasses.replace(config.train, seed=seed),
                monitoring=dataclasses.replace(config.monitoring, port=0),
            )
            started = time.perf_counter()
            TrainingDaemon(app, threading.Event(), observers=[recorder]).run()
            for name in MODELS:
                auc, loss, n = recorder.scores(name)
                online[name]["auc"].append(auc)
                online[name]["logloss"].append(loss)
                print(f"  [seed {seed}] online {name}: prequential AUC {auc:.4f} logloss {loss:.4f} over {n} events "
                      f"({time.perf_counter() - started:.0f} s for both models)", flush=True)

    data = FeatureEncoder(config.model.features).encode(table)
    offline: dict[str, dict[str, list[float]]] = {m: {"auc": [], "logloss": []} for m in MODELS}
    train = dataclasses.replace(config.train, max_epochs=args.offline_epochs)
    for seed in range(args.seeds):
        split = split_rows(len(data), "time", 0.2, train.validation_fraction, seed)
        for name in MODELS:
            run = train_and_test(dataclasses.replace(config.model, kind=name), dataclasses.replace(train, seed=seed), data, split)
            offline[name]["auc"].append(run.test.auc)
            offline[name]["logloss"].append(run.test.logloss)
            print(f"  [seed {seed}] offline {name}: test AUC {run.test.auc:.4f} logloss {run.test.logloss:.4f}", flush=True)

    print("\n| model | online prequential AUC | online logloss | offline time-split AUC | offline logloss |")
    print("|---|---|---|---|---|")
    for name in MODELS:
        print(f"| {name} | {_fmt(online[name]['auc'])} | {_fmt(online[name]['logloss'])} | "
              f"{_fmt(offline[name]['auc'])} | {_fmt(offline[name]['logloss'])} |")
    print(f"({args.seeds} seeds, mean ± std; online: one pass, each event scored before it is trained on; "
          f"offline: up to {args.offline_epochs} epochs with early stopping on the latest 10% of training events)")


if __name__ == "__main__":
    main()
