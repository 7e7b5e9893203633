"""Feature-hashing throughput and collision rates.

    python -m bench.hashing [--values 1000000] [--ids 10000000]

Throughput: values/s of `model.hashing.bucketize` (numpy, one thread) on integer ids and
on string ids, side by side with a per-value hashlib loop (the obvious stable
alternative) in the same run; the target is at least 1M values/s on one core.
Collisions: per categorical field of the shipped configs, on ML-100K and the synthetic log.
Index ids: `stream.ids.to_index_ids` on ``--ids`` distinct string ids (random 64-bit hex
ids and UUIDs): ids/s and the number of colliding ids, beside the birthday-bound
expectation n**2 / 2**(ID_BITS + 1).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inttower.config import load_config
from model.features import FeatureEncoder
from model.hashing import bucketize, salt_for
from stream.datasets import find_movielens, how_to_get
from stream.ids import ID_BITS, to_index_ids
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log

REPO = Path(__file__).resolve().parents[1]
BUCKETS = 1_000_003


def _per_value_hashlib(values: list, buckets: int) -> np.ndarray:
    return np.array(
        [1 + int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") % (buckets - 1) for v in values]
    )


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def throughput(n: int) -> None:
    rng = np.random.default_rng(0)
    ints = pa.array(rng.integers(0, 10**12, n))
    strings = pa.array([f"user-{x}" for x in rng.integers(0, 10**9, n)])
    salt = salt_for("user_id")
    baseline_n = min(n, 200_000)
    print("| input | bucketize values/s | per-value hashlib values/s | ratio |")
    print("|---|---|---|---|")
    for name, values in (("int64 ids", ints), ("string ids", strings)):
        ours = n / _best_of(lambda: bucketize(values, BUCKETS, salt))
        py_values = values.slice(0, baseline_n).to_pylist()
        theirs = baseline_n / _best_of(lambda: _per_value_hashlib(py_values, BUCKETS), repeats=1)
        print(f"| {name} ({n:,}) | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.1f}x |")


def collisions() -> None:
    print("\n| data | field | distinct values | table rows | distinct ids | collision rate |")
    print("|---|---|---|---|---|---|")
    sources = []
    ml100k = find_movielens("ml-100k")
    if ml100k is not None:
        config = load_config(REPO / "configs" / "movielens.toml")
        sources.append(("ML-100K", import_movielens(ml100k, config.data.movielens), config))
    else:
        print(f"(ML-100K skipped: {how_to_get('ml-100k')})")
    config = load_config(REPO / "configs" / "synthetic.toml")
    sources.append(("synthetic", generate_synthetic_log(config.data.synthetic), config))
    for name, table, config in sources:
        report = FeatureEncoder(config.model.features).collision_report(table)
        buckets = {f.name: f.buckets for f in config.model.features}
        for field, stats in report.items():
            print(f"| {name} | {field} | {stats.distinct_values:,} | {buckets[field]:,} | {stats.distinct_ids:,} | {stats.rate:.2%} |")


def _distinct_string_ids(kind: str, n: int, rng: np.random.Generator) -> pa.Array:
    """``n`` distinct string ids: 16-hex-digit hashed ids or UUID-formatted ones."""
    high = np.unique(rng.integers(0, 2**63 - 1, int(n * 1.01), dtype=np.int64))[:n]
    rng.shuffle(high)
    if kind == "hex64":
        return pa.array([f"{x:016x}" for x in high.tolist()])
    low = rng.integers(0, 2**63 - 1, n, dtype=np.int64).tolist()
    hexes = (f"{h:016x}{lo:016x}" for h, lo in zip(high.tolist(), low))
    return pa.array([f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}" for x in hexes])


def index_id_collisions(n: int) -> None:
    print(f"\n| string ids | distinct ids | ids/s (to_index_ids) | colliding ids | expected (n^2 / 2^{ID_BITS + 1}) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(1)
    for kind in ("hex64", "uuid"):
        values = _distinct_string_ids(kind, n, rng)
        assert pc.count_distinct(values).as_py() == n
        started = time.perf_counter()
        ids = to_index_ids(values)
        seconds = time.perf_counter() - started
        colliding = n - np.unique(ids).size
        print(f"| {kind} (e.g. {values[0].as_py()}) | {n:,} | {n / seconds:,.0f} | {colliding} | {n * n / 2 ** (ID_BITS + 1):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--ids", type=int, default=10_000_000, help="distinct string ids for the index-id collision count")
    args = parser.parse_args()
    throughput(args.values)
    collisions()
    index_id_collisions(args.ids)


if __name__ == "__main__":
    main()
