"""Index sync costs at catalogue scale, measured side by side in one run.

    python -m bench.index_sync [--items 1000000]

With the default IntTower (4 heads x 32 dims an item) and a catalogue of 1M items:
- sync time for 1k, 10k and 100k dirty items: encoding, and publishing (build the next
  version off the read path + swap) with the clone layout and with base + delta;
- the full refresh of every item;
- reader latency (score 1,000 candidates for one user) idle and while versions are
  being published back to back, p50 / p99 and the ratio;
- resident memory of one live version and of two (a reader still holding the old one),
  per layout.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

import numpy as np
import pyarrow as pa
import torch

from index_sync.catalogue import ItemCatalogue
from index_sync.config import IndexSyncConfig
from index_sync.index import LiveIndex
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
    sizes = tuple(n for n in DIRTY if n <= args.items)  # dirty-set sizes this catalogue can hold
    if not sizes:
        parser.error(f"--items {args.items}: at least {DIRTY[0]:,} (the smallest dirty set measured)")
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

    full = sync.publish(_handoff(model, np.zeros(0, np.int64), full=True))
    print(f"\nfull refresh of {full.items_encoded:,} items: {full.seconds:.2f} s "
          f"({full.items_encoded / full.seconds:,.0f} items/s, encoding included)")
    all_ids = sync.index.current.item_ids
    all_vectors, _ = sync.index.current.vectors(all_ids)

    rng = np.random.default_rng(1)
    dirty = {n: np.sort(rng.choice(all_ids, n, replace=False)) for n in sizes}
    encode_s = {}
    encoded = {}
    for n, ids in dirty.items():
        t0 = time.perf_counter()
        _, encoded[n] = sync.encode(model, ids)
        encode_s[n] = time.perf_counter() - t0
    publish_s: dict[str, dict[int, float]] = {}
    memory: dict[str, tuple[float, float]] = {}
    for layout in ("clone", "delta"):
        gc.collect()
        before = _rss_mb()
        live = LiveIndex(sync.index.heads, sync.index.dim, layout=layout)
        live.publish_full(all_ids, all_vectors)
        one = _rss_mb() - before
        publish_s[layout] = {}
        live.publish_update(dirty[sizes[0]][:100], encoded[sizes[0]][:100])  # warm-up: first-use costs
        for n, ids in dirty.items():
            t0 = time.perf_counter()
            live.publish_update(ids, encoded[n])
            publish_s[layout][n] = time.perf_counter() - t0
        held = live.current  # a reader still on it while the next goes live
        live.publish_update(dirty[sizes[0]], encoded[sizes[0]])
        gc.collect()
        memory[layout] = (one, _rss_mb() - before)
        del held, live
    print(f"\n| dirty items of {args.items:,} | encode s | publish s, clone layout | publish s, base + delta | clone / delta |")
    print("|---|---|---|---|---|")
    for n in sizes:
        c, d = publish_s["clone"][n], publish_s["delta"][n]
        print(f"| {n:,} | {encode_s[n]:.3f} | {c:.3f} | {d:.3f} | {c / d:.1f}x |")
    print("(publish = build the next version off the read path + swap; the delta is cumulative across the rows,"
          " as it is between two full refreshes)")
    print("\n| layout | resident MB, one version | resident MB, two live versions (old still held) |")
    print("|---|---|---|")
    for layout, (one, two) in memory.items():
        print(f"| {layout} | {one:,.0f} | {two:,.0f} |")
    vectors_mb = all_ids.size * sync.index.heads * sync.index.dim * 4 / 2**20
    print(f"({all_ids.size:,} items x {sync.index.heads} heads x {sync.index.dim} dims x 4 B = {vectors_mb:,.0f} MB of vectors)")

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
        _, vectors = sync.encode(model, ids)
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
    print("(2 shared CPU cores: the reader and the publisher compete for them)")


if __name__ == "__main__":
    main()
