"""End-to-end streaming throughput vs the offline step rate of the same model.

    python -m bench.stream_throughput [--events 100000] [--batch 2048] [--model inttower] [--rounds 1] [--threads 0]

For JSON and for Arrow messages: the synthetic log is replayed into a 4-partition topic
on the embedded broker first, then consumed, decoded, feature-encoded and trained on
(one prequential step per batch: score, then Adam step) as the daemon does. The same
model on the same batches held in memory gives the offline rate; the ratio says how
much of the trainer's capacity the streaming path costs. Time shares: waiting for the
next decoded batch (consuming and decoding run in a background thread, so only what is
not overlapped shows), feature encoding (hashing), and the training step.

JSON runs twice, from the same topic: with the decoder's msgspec fast path, and with the
reference path only (Python's ``json`` and field-by-field checks, the decoder as it was
before the fast path), so the two are compared side by side under the same load. JSON
(fast path) and Arrow also run on the confluent-kafka client (``[stream] client =
"confluent"``: librdkafka parses records in C) next to kafka-python; those rows are left
out when confluent-kafka is not installed. A
shared machine drifts, so every path runs once per round (``--rounds``, interleaved),
the offline rate before each round and after the last, and the table shows medians.
The last column is the decoder alone (`decode_messages` on the same messages held in
memory, thread CPU time): events per second on one core. ``--threads N`` gives the
training step (offline and streaming alike) N torch threads: fewer than the cores leaves
the consumer thread a core of its own, as a trainer on a bigger machine has.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

import stream.json_events
from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.device import resolve_device
from model.features import FeatureEncoder, event_schema
from model.online import OnlineTrainer
from stream.broker import EmbeddedBroker, create_topic
from stream.codec import ARROW_HEADERS, JSON_HEADERS, RawMessage, decode_messages, encode_arrow_batch, table_to_json_events
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


@contextmanager
def json_decoding(fast: bool) -> Iterator[None]:
    """Decode JSON with (True) or without (False) the msgspec fast path while the block runs."""
    saved = stream.json_events.USE_FAST_PATH
    stream.json_events.USE_FAST_PATH = fast
    try:
        yield
    finally:
        stream.json_events.USE_FAST_PATH = saved


def decode_rate(table, fmt: str, batch: int) -> float:
    """Events per CPU-second of `decode_messages` alone, on the messages replay would produce."""
    schema = event_schema(ModelConfig().features)
    if fmt == "arrow":
        values = [encode_arrow_batch(table.slice(s, batch)) for s in range(0, table.num_rows, batch)]
        messages = [RawMessage(0, i, v, list(ARROW_HEADERS), 0) for i, v in enumerate(values)]
        step = 1
    else:
        messages = [RawMessage(0, i, v, list(JSON_HEADERS), 0) for i, v in enumerate(table_to_json_events(table))]
        step = batch
    started = time.thread_time()
    for s in range(0, len(messages), step):
        decode_messages(messages[s : s + step], schema, 1 << 30)
    return table.num_rows / (time.thread_time() - started)


#: (label, wire format, JSON fast path on, Kafka client) of each streaming path, run in this order in every round.
PATHS: tuple[tuple[str, str, bool, str], ...] = (
    ("json, reference path (stdlib json)", "json", False, "kafka-python"),
    ("json", "json", True, "kafka-python"),
    ("arrow", "arrow", True, "kafka-python"),
    ("json on confluent-kafka", "json", True, "confluent"),
    ("arrow on confluent-kafka", "arrow", True, "confluent"),
)


def _available(paths: tuple[tuple[str, str, bool, str], ...]) -> tuple[tuple[str, str, bool, str], ...]:
    """The paths whose Kafka client is installed."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        print("confluent-kafka is not installed: its rows are left out")
        return tuple(p for p in paths if p[3] != "confluent")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--model", default="inttower", choices=("inttower", "two_tower", "lr"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every path; medians are printed")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the step, offline and streaming alike (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    table = generate_synthetic_log(SyntheticLogConfig(events=args.events, seed=0))
    print(f"{args.events} synthetic events, {args.model}, batch {args.batch}, device {device}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {args.rounds} round(s)")
    offline: list[float] = []
    paths = _available(PATHS)
    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in paths}
    produce_rate: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        for fmt in ("json", "arrow"):
            create_topic(broker.bootstrap, f"throughput-{fmt}", PARTITIONS)
            produce_rate[fmt] = replay(table, _stream(broker.bootstrap, fmt, "replay", args.batch), fmt=fmt,
                                       arrow_batch_events=args.batch, progress=False).events_per_s
        for round_ in tqdm(range(args.rounds), desc="rounds", disable=args.rounds == 1):
            offline.append(offline_rate(table, args.batch, args.model, device))
            for i, (label, fmt, fast, client) in enumerate(paths):
                with json_decoding(fast):
                    stream = _stream(broker.bootstrap, fmt, f"bench-{round_}-{i}", args.batch, client)
                    results[label].append(streaming_rate(stream, args.events, args.model, device))
    offline.append(offline_rate(table, args.batch, args.model, device))
    offline_rate_ = statistics.median(offline)
    print("\n| path | events/s | ratio to offline | waiting for batches | feature encoding | train step "
          "| (replay produce events/s) | (decoder alone, events/s on one core) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| offline (same batches in memory; runs {', '.join(f'{r:,.0f}' for r in offline)}) | "
          f"{offline_rate_:,.0f} | 1.00 | - | - | 100% | - | - |")
    for label, fmt, fast, _ in paths:
        r = {key: statistics.median(run[key] for run in results[label]) for key in results[label][0]}
        with json_decoding(fast):
            decoder = decode_rate(table, fmt, args.batch)
        print(f"| Kafka {label} -> decode -> step | {r['rate']:,.0f} | {r['rate'] / offline_rate_:.2f} | {r['wait']:.0%} | "
              f"{r['encode']:.0%} | {r['step']:.0%} | {produce_rate[fmt]:,.0f} | {decoder:,.0f} |")
    print("(a step = prequential scoring in eval mode + one Adam step, as in the daemon; medians over rounds)")


def _stream(bootstrap: str, fmt: str, group_id: str, batch: int, client: str = "kafka-python") -> StreamConfig:
    topic = f"throughput-{fmt}"
    return StreamConfig(bootstrap_servers=(bootstrap,), topic=topic, group_id=group_id, dead_letter_topic=f"{topic}.dlq",
                        max_batch_events=batch, session_timeout_ms=2000, heartbeat_interval_ms=500, client=client)


if __name__ == "__main__":
    main()
