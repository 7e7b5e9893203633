"""End-to-end streaming throughput vs the offline step rate of the same model.

    python -m bench.stream_throughput [--events 100000] [--batch 2048] [--model inttower]

For JSON and for Arrow messages: the synthetic log is replayed into a 4-partition topic
on the embedded broker first, then consumed, decoded, feature-encoded and trained on
(one prequential step per batch: score, then Adam step) as the daemon does. The same
model on the same batches held in memory gives the offline rate; the ratio says how
much of the trainer's capacity the streaming path costs. Time shares: waiting for the
next decoded batch (consuming and decoding run in a background thread, so only what is
not overlapped shows), feature encoding (hashing), and the training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from inttower.daemon import event_schema
from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.device import resolve_device
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from stream.broker import EmbeddedBroker, create_topic
from stream.config import StreamConfig
from stream.consumer import ClickStreamConsumer
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

PARTITIONS = 4
BATCH_WAIT_S = 5.0


def _trainer(kind: str, device: torch.device) -> OnlineTrainer:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ModelConfig(), kind=kind)).to(device)
    return OnlineTrainer(model, TrainConfig(), OnlineConfig())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def offline_rate(table, batch: int, kind: str, device: torch.device) -> float:
    encoder = FeatureEncoder(ModelConfig().features)
    batches = [encoder.encode(table.slice(s, batch)) for s in range(0, table.num_rows, batch)]
    trainer = _trainer(kind, device)
    trainer.step(batches[0])  # warm-up (allocations, bias init), as the streaming run has
    _sync(device)
    started = time.perf_counter()
    for b in batches[1:]:
        trainer.step(b)
    _sync(device)
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - started)


def streaming_rate(stream: StreamConfig, events: int, kind: str, device: torch.device) -> dict[str, float]:
    encoder = FeatureEncoder(ModelConfig().features)
    trainer = _trainer(kind, device)
    consumer = ClickStreamConsumer(stream, event_schema(ModelConfig().features))
    wait = encode = step = 0.0
    seen = 0
    first = consumer.next_batch(timeout_s=30)  # group join + first fetch: not counted
    trainer.step(encoder.encode(first.table))
    seen_after_warmup = events - first.table.num_rows
    started = time.perf_counter()
    while seen < seen_after_warmup:
        t0 = time.perf_counter()
        batch = consumer.next_batch(timeout_s=BATCH_WAIT_S)
        t1 = time.perf_counter()
        wait += t1 - t0
        if batch is None:
            raise RuntimeError(f"stream ran dry after {seen} of {seen_after_warmup} events")
        features = encoder.encode(batch.table)
        t2 = time.perf_counter()
        trainer.step(features)
        _sync(device)
        t3 = time.perf_counter()
        encode, step = encode + t2 - t1, step + t3 - t2
        seen += batch.table.num_rows
    total = time.perf_counter() - started
    consumer.close()
    return {"rate": seen / total, "wait": wait / total, "encode": encode / total, "step": step / total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--model", default="inttower", choices=("inttower", "two_tower", "lr"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    table = generate_synthetic_log(SyntheticLogConfig(events=args.events, seed=0))
    print(f"{args.events} synthetic events, {args.model}, batch {args.batch}, device {device}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    offline = offline_rate(table, args.batch, args.model, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        for fmt in ("json", "arrow"):
            topic = f"throughput-{fmt}"
            create_topic(broker.bootstrap, topic, PARTITIONS)
            stream = StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=topic, group_id=f"bench-{fmt}",
                                  dead_letter_topic=f"{topic}.dlq", max_batch_events=args.batch,
                                  session_timeout_ms=2000, heartbeat_interval_ms=500)
            produced = replay(table, stream, fmt=fmt, arrow_batch_events=args.batch, progress=False)
            result = streaming_rate(stream, args.events, args.model, device)
            rows.append((fmt, produced.events_per_s, result))
    print("\n| path | events/s | ratio to offline | waiting for batches | feature encoding | train step | (replay produce events/s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| offline (same batches in memory) | {offline:,.0f} | 1.00 | - | - | 100% | - |")
    for fmt, produce_rate, r in rows:
        print(f"| Kafka {fmt} -> decode -> step | {r['rate']:,.0f} | {r['rate'] / offline:.2f} | {r['wait']:.0%} | "
              f"{r['encode']:.0%} | {r['step']:.0%} | {produce_rate:,.0f} |")
    print("(a step = prequential scoring in eval mode + one Adam step, as in the daemon)")


if __name__ == "__main__":
    main()
