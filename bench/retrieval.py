"""Retrieval at scale: IntTower's exact sum-of-max top-k against per-head ANN candidates, beside Two-Tower.

    python -m bench.retrieval [--items 100000 1000000] [--users 100] [--k 100] [--threads 2]

For each catalogue size: a synthetic world with that many items, IntTower (4 heads x 32)
and Two-Tower (1 x 128) trained one pass on ``--train-events`` of its stream (batches of
256, the default config), every item encoded by each model's item tower into an index
version, and ``--users`` users drawn from the stream. Per method, over those users:
recall@k against the exact top-k (mean, and the mean over the worst decile of users),
p50/p99 latency of one user's retrieval (from the user's query vectors to the final top-k;
the user tower runs once before and is not timed), the index build time and its size.

The exact top-k is computed apart from every method: the model's own scorer
(``model.score``, FE-Block's sum of maxima) over every item, in chunks. Methods:

* ``two-tower flat``: FAISS IndexFlatIP search (Two-Tower's exact retrieval; recall 1).
* ``exact scan``: `index_sync.retrieval.exact_top_k`, the blocked sum-of-max scan.
* ``per-head flat``: every query vector searches the item heads of the flat index for
  ``hits`` rows, the union of their items re-scored exactly
  (`index_sync.retrieval.per_head_candidates`).
* ``per-head IVF / HNSW``: the same through `index_sync.retrieval.AnnSearch` (what
  ``[serving] retrieval = "ivf" | "hnsw"`` runs): an ANN index built beside the flat
  base (its build time is the ``prepare`` the serving follower runs once per base),
  candidates re-scored with vectors gathered from the flat version.

Latencies are ratios to Two-Tower flat's p50 measured in the same run, threads set by
``--threads`` for both torch and FAISS.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import torch

from index_sync.index import LiveIndex
from index_sync.flat_rows import flat_rows
from index_sync.retrieval import AnnSearch, exact_top_k, per_head_candidates
from index_sync.version import IndexVersion
from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log, synthetic_items

ENCODE_BATCH = 8192
TRAIN_BATCH = 256
GROUND_TRUTH_CHUNK = 65_536


@dataclass
class Row:
    items: int
    method: str
    recall_mean: float
    recall_worst_decile: float
    p50_ms: float
    p99_ms: float
    build_s: float
    size_mib: float


def _train(kind: str, log: pa.Table, encoder: FeatureEncoder) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(ModelConfig(), kind=kind))
    trainer = OnlineTrainer(model, TrainConfig(), OnlineConfig())
    for start in range(0, log.num_rows, TRAIN_BATCH):
        trainer.step(encoder.encode(log.slice(start, TRAIN_BATCH)))
    return model.eval()


@torch.no_grad()
def _encode_items(model: torch.nn.Module, items: pa.Table, encoder: FeatureEncoder) -> np.ndarray:
    return np.concatenate([model.encode_items(encoder.encode_tower(items.slice(s, ENCODE_BATCH), "item")).numpy()
                           for s in range(0, items.num_rows, ENCODE_BATCH)])


@torch.no_grad()
def _ground_truth(model: torch.nn.Module, users: torch.Tensor, vectors: np.ndarray, ids: np.ndarray, k: int) -> list[set]:
    """Exact top-k item ids per user through the model's own scorer (independent of the methods)."""
    truth = []
    items = torch.from_numpy(vectors)
    for u in range(users.shape[0]):
        user = users[u:u + 1]
        scores = torch.cat([model.score(user, items[s:s + GROUND_TRUTH_CHUNK])
                            for s in range(0, items.shape[0], GROUND_TRUTH_CHUNK)])
        truth.append(set(ids[torch.topk(scores, k).indices.numpy()].tolist()))
    return truth


def _timed(fn: Callable[[int], np.ndarray], users: int) -> tuple[list[np.ndarray], list[float]]:
    fn(0)  # warm-up
    found, times = [], []
    for u in range(users):
        started = time.perf_counter()
        found.append(fn(u))
        times.append(time.perf_counter() - started)
    return found, times


def _row(items: int, method: str, found: list[np.ndarray], times: list[float], truth: list[set], k: int,
         build_s: float, size_bytes: int) -> Row:
    recalls = np.sort([len(truth[u] & set(f.tolist())) / k for u, f in enumerate(found)])
    worst = recalls[:max(1, len(recalls) // 10)]
    times = sorted(times)
    return Row(items, method, float(recalls.mean()), float(worst.mean()), statistics.median(times) * 1e3,
               times[min(len(times) - 1, int(0.99 * len(times)))] * 1e3, build_s, size_bytes / 2**20)


def _size(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def _rescore(model: torch.nn.Module, version: IndexVersion, user: torch.Tensor, candidates: np.ndarray, k: int) -> np.ndarray:
    vectors, _ = version.vectors(candidates)
    with torch.no_grad():
        scores = model.score(user, torch.from_numpy(vectors))
    return candidates[torch.topk(scores, min(k, scores.numel())).indices.numpy()]


def run_size(n_items: int, args: argparse.Namespace) -> list[Row]:
    config = SyntheticLogConfig(events=args.train_events, seed=args.seed, initial_items=n_items)
    items = synthetic_items(config)
    ids = items.column("item_id").to_numpy()
    log = generate_synthetic_log(config)
    encoder = FeatureEncoder(ModelConfig().features)
    user_rows = log.take(np.unique(log.column("user_id").to_numpy(), return_index=True)[1][:args.users])
    rows: list[Row] = []

    started = time.perf_counter()
    tt = _train("two_tower", log, encoder)
    it = _train("inttower", log, encoder)
    print(f"{n_items:,} items: trained both models on {log.num_rows:,} events in {time.perf_counter() - started:.0f} s",
          flush=True)
    with torch.no_grad():
        tt_users = tt.encode_user(encoder.encode_tower(user_rows, "user"))
        it_users = it.encode_user(encoder.encode_tower(user_rows, "user"))
    tt_vectors, it_vectors = _encode_items(tt, items, encoder), _encode_items(it, items, encoder)
    heads, dim = it_vectors.shape[1], it_vectors.shape[2]
    queries = [np.ascontiguousarray(it_users[u].reshape(-1, dim).numpy()) for u in range(len(user_rows))]
    users = len(queries)

    truth_tt = _ground_truth(tt, tt_users, tt_vectors, ids, args.k)
    truth_it = _ground_truth(it, it_users, it_vectors, ids, args.k)

    started = time.perf_counter()
    tt_version = LiveIndex(1, tt_vectors.shape[2]).publish_full(ids, tt_vectors)
    tt_build = time.perf_counter() - started
    tt_queries = tt_users.reshape(users, -1).numpy()
    found, times = _timed(lambda u: tt_version.index.search(tt_queries[u:u + 1], args.k)[1][0], users)
    rows.append(_row(n_items, "two-tower flat", found, times, truth_tt, args.k, tt_build, _size(tt_version.index)))

    started = time.perf_counter()
    it_version = LiveIndex(heads, dim).publish_full(ids, it_vectors)
    flat_rows(it_version.index, heads)
    it_build = time.perf_counter() - started
    it_size = _size(it_version.index)
    found, times = _timed(lambda u: exact_top_k(it_version, queries[u], args.k).item_ids, users)
    rows.append(_row(n_items, "IntTower exact scan", found, times, truth_it, args.k, it_build, it_size))

    for factor in args.hits_factors:
        hits = factor * args.k
        found, times = _timed(lambda u: _rescore(it, it_version, it_users[u:u + 1],
                                                 per_head_candidates(it_version, queries[u], hits), args.k), users)
        rows.append(_row(n_items, f"IntTower per-head flat, {hits} hits", found, times, truth_it, args.k, it_build, it_size))

    for kind in args.ann:
        if kind == "hnsw" and n_items > args.hnsw_max_items:
            print(f"  (HNSW skipped at {n_items:,} items: over --hnsw-max-items)")
            continue
        for search in args.nprobe if kind == "ivf" else args.ef_search:
            ann = AnnSearch(kind, hits_per_query=args.hits_factors[-1] * args.k, nprobe=search, ef_search=search,
                            hnsw_m=args.hnsw_m)
            started = time.perf_counter()
            ann.prepare(it_version)  # the serving follower's step: once per base
            build = time.perf_counter() - started
            index = ann.ann_index(it_version)
            inner = faiss.downcast_index(index.index)
            label = (f"IntTower per-head IVF{inner.nlist} nprobe {search}" if kind == "ivf"
                     else f"IntTower per-head HNSW{args.hnsw_m} efSearch {search}")
            found, times = _timed(lambda u: _rescore(it, it_version, it_users[u:u + 1],
                                                     ann.candidates(it_version, queries[u]), args.k), users)
            rows.append(_row(n_items, f"{label}, {ann.hits_per_query} hits", found, times, truth_it, args.k, build,
                             _size(index)))
    return rows


def _print(rows: list[Row], k: int) -> None:
    print(f"\n| items | method | recall@{k} mean | worst decile | p50 ms | p99 ms | p50 / Two-Tower flat | build s | index MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {r.items: r.p50_ms for r in rows if r.method == "two-tower flat"}
    for r in rows:
        print(f"| {r.items:,} | {r.method} | {r.recall_mean:.4f} | {r.recall_worst_decile:.4f} | {r.p50_ms:.1f} | "
              f"{r.p99_ms:.1f} | {r.p50_ms / base[r.items]:.2f}x | {r.build_s:.1f} | {r.size_mib:.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--train-events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads")
    parser.add_argument("--hits-factors", type=int, nargs="+", default=[4, 16],
                        help="per-head rows searched per query vector, as multiples of k")
    parser.add_argument("--ann", nargs="*", default=["ivf", "hnsw"], choices=["ivf", "hnsw"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[256])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-max-items", type=int, default=100_000,
                        help="skip HNSW above this many items (its build is the slow part on a CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, {args.threads} threads; {args.users} users, k = {args.k}")
    rows = [row for n in args.items for row in run_size(n, args)]
    _print(rows, args.k)


if __name__ == "__main__":
    main()
