"""Index sync costs at catalogue scale, measured side by side in one run.

    python -m bench.index_sync [--items 1000000]

With the default IntTower (4 heads x 32 dims an item) and a catalogue of 1M items:
- sync time for 1k, 10k and 100k dirty items (encode + build the next version + swap),
  split into encoding and publishing, for the clone layout;
- the full refresh of every item;
- reader latency (score 1,000 candidates for one user) idle and while versions are
  being published back to back, p50 / p99 and the ratio;
- resident memory of one live version and of two (a reader still holding the old one).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time

import numpy as np
import pyarrow as pa
import torch

from index_sync.catalogue import ItemCatalogue
from index_sync.config import IndexSyncConfig
from index_sync.serving import Reader
from index_sync.sync import IndexSync, _Handoff
from model.build import build_model
from model.config import ModelConfig
from model.features import FeatureEncoder
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

DIRTY = (1_000, 10_000, 100_000)
READER_CANDIDATES = 1_000
READER_CALLS = 300


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _catalogue(items: int, template: pa.Table) -> ItemCatalogue:
    """``items`` distinct items whose features are drawn from the synthetic stream's."""
    rng = np.random.default_rng(0)
    catalogue = ItemCatalogue(items)
    step = 200_000
    for start in range(0, items, step):
        n = min(step, items - start)
        rows = template.take(rng.integers(0, template.num_rows, n))
        catalogue.update(pa.table({"item_id": pa.array(np.arange(start + 1, start + n + 1, dtype=np.int64)),
                                   "item": rows.column("item")}))
    return catalogue


def _handoff(model, ids: np.ndarray, full: bool) -> _Handoff:
    return _Handoff(full, ids, np.full(ids.size, time.time()), np.zeros(0, np.int64), model, 0.0)


def _latencies(reader: Reader, user: pa.Table, candidates: np.ndarray, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        reader.score(user, candidates)
        out.append(time.perf_counter() - started)
    return out


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = ModelConfig()
    encoder = FeatureEncoder(config.features)
    model = build_model(config).eval()
    template = generate_synthetic_log(SyntheticLogConfig(events=20_000, seed=0))
    started = time.perf_counter()
    sync = IndexSync(IndexSyncConfig(max_items=args.items, drift_sample=0), model, encoder)
    sync.catalogue = _catalogue(args.items, template)
    print(f"catalogue of {len(sync.catalogue):,} items built in {time.perf_counter() - started:.1f} s; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")

    rss_before = _rss_mb()
    full = sync.publish(_handoff(model, np.zeros(0, np.int64), full=True))
    one_version = _rss_mb() - rss_before
    print(f"\nfull refresh of {full.items_encoded:,} items: {full.seconds:.2f} s "
          f"({full.items_encoded / full.seconds:,.0f} items/s, encoding included)")

    print("\n| dirty items of %s | encode s | publish (clone + remove + add + swap) s | total s |" % f"{args.items:,}")
    print("|---|---|---|---|")
    rng = np.random.default_rng(1)
    for n in DIRTY:
        ids = np.sort(rng.choice(np.arange(1, args.items + 1), n, replace=False))
        t0 = time.perf_counter()
        vectors = sync.encode(model, ids)
        t1 = time.perf_counter()
        sync.index.publish_update(ids, vectors)
        t2 = time.perf_counter()
        print(f"| {n:,} | {t1 - t0:.3f} | {t2 - t1:.3f} | {t2 - t0:.3f} |")

    held = sync.index.current  # a reader still on the old version while the next is live
    gc.collect()
    rss_one = _rss_mb()
    sync.index.publish_update(np.arange(1, 1001, dtype=np.int64), sync.encode(model, np.arange(1, 1001, dtype=np.int64)))
    gc.collect()
    two_versions = _rss_mb() - rss_one + one_version
    del held

    from index_sync.serving import ServingSnapshot

    sync.snapshot = ServingSnapshot(sync.index.current, model)
    reader = Reader(encoder, lambda: sync.snapshot)
    user = template.slice(0, 1)
    candidates = rng.choice(np.arange(1, args.items + 1), READER_CANDIDATES, replace=False)
    idle = _latencies(reader, user, candidates, READER_CALLS)
    stop = threading.Event()
    swaps = [0]

    def publish_back_to_back():
        ids = np.arange(1, 1001, dtype=np.int64)
        vectors = sync.encode(model, ids)
        while not stop.is_set():
            sync.snapshot = ServingSnapshot(sync.index.publish_update(ids, vectors), model)
            swaps[0] += 1

    publisher = threading.Thread(target=publish_back_to_back)
    publisher.start()
    busy = _latencies(reader, user, candidates, READER_CALLS)
    stop.set()
    publisher.join()
    print(f"\n| reader: score {READER_CANDIDATES:,} candidates | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| idle | {_p(idle, 0.5):.2f} | {_p(idle, 0.99):.2f} |")
    print(f"| during swaps ({swaps[0]} versions published meanwhile) | {_p(busy, 0.5):.2f} | {_p(busy, 0.99):.2f} |")
    print(f"| ratio | {_p(busy, 0.5) / _p(idle, 0.5):.2f}x | {_p(busy, 0.99) / _p(idle, 0.99):.2f}x |")
    print(f"\nresident memory: one live version ~{one_version:,.0f} MB; two (old one still held) ~{two_versions:,.0f} MB "
          f"({full.items_encoded:,} items x {sync.index.heads} heads x {sync.index.dim} dims x 4 B = "
          f"{full.items_encoded * sync.index.heads * sync.index.dim * 4 / 2**20:,.0f} MB of vectors)")
    print("(2 shared CPU cores: the reader and the publisher compete for them)")


if __name__ == "__main__":
    main()
