"""What exporting metrics costs the daemon: throughput with metrics on vs off, side by side.

    python -m bench.metrics_cost [--events 60000] [--rounds 2]

The synthetic log is replayed once (Arrow) into a topic on the embedded broker; the
daemon then consumes it from the start with monitoring on and off, alternating, each
run in its own consumer group. Throughput is measured from the first batch to the last
(group join excluded). A Prometheus-style scrape of the metrics endpoint runs every
second during the runs with metrics on, as a real deployment would cause.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import threading
import urllib.request
from pathlib import Path

from inttower.config import default_config
from inttower.daemon import TrainingDaemon
from stream.broker import EmbeddedBroker, create_topic, free_port
from stream.replay import replay
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

SCRAPE_EVERY_S = 1.0


def run(config, events: int, group: str, checkpoint_dir: str, monitoring: bool) -> float:
    port = free_port()
    app = dataclasses.replace(
        config,
        stream=dataclasses.replace(config.stream, group_id=group),
        daemon=dataclasses.replace(config.daemon, checkpoint_dir=checkpoint_dir, stop_after_events=events, status_every_s=60.0),
        monitoring=dataclasses.replace(config.monitoring, enabled=monitoring, port=port),
    )
    stop = threading.Event()
    scraping = threading.Event()

    def scrape():
        while not scraping.wait(SCRAPE_EVERY_S):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            except OSError:
                pass

    scraper = threading.Thread(target=scrape, daemon=True)
    if monitoring:
        scraper.start()
    summary = TrainingDaemon(app, stop).run()
    scraping.set()
    return summary.events / summary.streaming_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    table = generate_synthetic_log(SyntheticLogConfig(events=args.events, seed=0))
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker:
        base = default_config()
        stream = dataclasses.replace(base.stream, bootstrap_servers=(broker.bootstrap,), topic="cost",
                                     dead_letter_topic="cost.dlq", max_batch_events=512)
        create_topic(broker.bootstrap, "cost", 4)
        replay(table, stream, fmt="arrow", arrow_batch_events=512, progress=False)
        config = dataclasses.replace(base, stream=stream)
        for r in range(args.rounds):
            for monitoring in (True, False) if r % 2 == 0 else (False, True):
                rate = run(config, args.events, f"cost-{r}-{monitoring}", f"{tmp}/ck-{r}-{monitoring}", monitoring)
                rates[monitoring].append(rate)
                print(f"  round {r}: metrics {'on ' if monitoring else 'off'} {rate:,.0f} events/s", flush=True)
    on, off = statistics.fmean(rates[True]), statistics.fmean(rates[False])
    print(f"\n| metrics | events/s (mean of {args.rounds}) |\n|---|---|\n| off | {off:,.0f} |\n| on (scraped every 1 s) | {on:,.0f} |")
    print(f"| on / off | {on / off:.3f} |")


if __name__ == "__main__":
    main()
