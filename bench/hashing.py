"""Feature-hashing throughput and collision rates.

    python -m bench.hashing [--values 1000000]

Throughput: values/s of `model.hashing.bucketize` (numpy, one thread) on integer ids and
on string ids, side by side with a per-value hashlib loop (the obvious stable
alternative) in the same run; the target is at least 1M values/s on one core.
Collisions: per categorical field of the shipped configs, on ML-100K and the synthetic log.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from inttower.config import load_config
from model.features import FeatureEncoder
from model.hashing import bucketize, salt_for
from stream.datasets import find_movielens, how_to_get
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    args = parser.parse_args()
    throughput(args.values)
    collisions()


if __name__ == "__main__":
    main()
