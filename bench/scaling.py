"""Data-parallel scaling: events/s of the training daemon with 1 and 2 ranks on the same stream.

    python -m bench.scaling [--events 40000] [--batch 512] [--ranks 1,2] [--model inttower] [--threads N]

The synthetic log is replayed once into a 4-partition topic on the embedded broker (Arrow
messages); then the daemon consumes the whole topic from the start, once per setting:
one process without torchrun (the consumer group reads every partition), and
``torchrun --nproc-per-node N`` for each N (rank r reads partitions p % N == r, DDP over
gloo or NCCL). Each rank gets ``torch.set_num_threads(cores // N)``, so every setting uses
the same cores (``--threads`` fixes the threads per rank instead: on a loaded machine
intra-op threads wait for each other and a multi-threaded rank can lose most of its
speed). events/s counts from rank 0's first batch to its last, without start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from stream.broker import EmbeddedBroker, create_topic, free_port
from stream.config import StreamConfig
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

PARTITIONS = 4
TOPIC = "scaling"
RUN_TIMEOUT_S = 1800
REPO_ROOT = Path(__file__).resolve().parents[1]


def _config(path: Path, bootstrap: str, name: str, events: int, batch: int, threads: int, model: str, device: str) -> Path:
    path.write_text(f"""
[model]
kind = "{model}"
[train]
threads = {threads}
device = "{device}"
[stream]
bootstrap_servers = ["{bootstrap}"]
topic = "{TOPIC}"
dead_letter_topic = "{TOPIC}.dlq"
group_id = "bench-{name}"
max_batch_events = {batch}
session_timeout_ms = 2000
heartbeat_interval_ms = 500
[monitoring]
enabled = false
[daemon]
checkpoint_dir = "{path.parent / ('checkpoints-' + name)}"
checkpoint_every_events = 100000000
checkpoint_every_s = 100000.0
status_every_s = 10.0
stop_after_events = {events}
""")
    return path


def _run(config: Path, ranks: int | None, threads: int, result: Path) -> dict:
    """One setting: ranks=None runs one plain process, else a torchrun job of ``ranks``."""
    worker = ["-m", "bench.scaling", "--worker", str(config), str(result)]
    if ranks is None:
        command = [sys.executable, *worker]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *worker]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def _worker(config_path: str, result_path: str) -> None:
    """One rank (or the one process): train until the topic's events are consumed; rank 0 writes the summary."""
    import logging
    import threading

    from inttower.config import load_config
    from inttower.daemon import TrainingDaemon
    from inttower.distributed import coordinator_from_env

    logging.basicConfig(level=logging.WARNING)
    config = load_config(config_path)
    coordinator = coordinator_from_env(config.train.device)
    try:
        summary = TrainingDaemon(config, threading.Event(), coordinator=coordinator).run()
    finally:
        coordinator.close()
    if coordinator.rank == 0:
        Path(result_path).write_text(json.dumps({"events": summary.events, "streaming_seconds": summary.streaming_seconds,
                                                 "seconds": summary.seconds, "auc": summary.models}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=512, help="max_batch_events of each rank's consumer")
    parser.add_argument("--ranks", default="1,2", help="torchrun world sizes to measure")
    parser.add_argument("--model", default="inttower", choices=("inttower", "two_tower", "lr"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads per rank (default: cores // ranks)")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return
    cores = os.cpu_count() or 1
    world_sizes = [int(n) for n in args.ranks.split(",")]
    table = generate_synthetic_log(SyntheticLogConfig(events=args.events, seed=0))
    print(f"{args.events} synthetic events in {PARTITIONS} partitions (Arrow), {args.model} (default size), "
          f"batch {args.batch} per rank, device {args.device}, {cores} cores, torch.set_num_threads("
          f"{args.threads if args.threads else 'cores // ranks'}) per rank, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        create_topic(broker.bootstrap, TOPIC, PARTITIONS)
        create_topic(broker.bootstrap, f"{TOPIC}.dlq", 1)
        replay(table, StreamConfig(bootstrap_servers=(broker.bootstrap,), topic=TOPIC), fmt="arrow",
               arrow_batch_events=args.batch, progress=False)
        for ranks in [None, *world_sizes]:
            threads = args.threads or max(1, cores // (ranks or 1))
            name = "plain" if ranks is None else f"ranks{ranks}"
            config = _config(Path(tmp) / f"{name}.toml", broker.bootstrap, name, args.events, args.batch, threads,
                             args.model, args.device)
            started = time.monotonic()
            result = _run(config, ranks, threads, Path(tmp) / f"{name}.json")
            if result["events"] < args.events:
                raise RuntimeError(f"{name}: consumed {result['events']} of {args.events} events")
            rows.append((ranks, threads, result["events"] / result["streaming_seconds"], time.monotonic() - started))
            print(f"  {name}: {rows[-1][2]:,.0f} events/s ({rows[-1][3]:.0f} s with start-up)", flush=True)
    base = next((rate for ranks, _, rate, _ in rows if ranks == 1), rows[0][2])
    print("\n| workers | launcher | threads per rank | events/s | vs 1 rank |")
    print("|---|---|---|---|---|")
    for ranks, threads, rate, _ in rows:
        launcher = "plain `inttower train`" if ranks is None else f"torchrun --nproc-per-node {ranks}"
        print(f"| {ranks or 1} | {launcher} | {threads} | {rate:,.0f} | {rate / base:.2f} |")
    print("(events/s: from rank 0's first batch to its last; each step all-reduces gradients across ranks)")


if __name__ == "__main__":
    main()
