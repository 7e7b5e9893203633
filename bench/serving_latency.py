"""Serving latency of one request, the shape of the paper's Figure 5.

    python -m bench.serving_latency [--repeats 50] [--device auto]

For one user and 100 / 1k / 10k candidates: Two-Tower and IntTower encode the user once,
gather the candidates' stored vectors from an index version and score them (inner
product; FE-Block sum-of-max); the single-tower ranker (DCN-style) runs its whole network
once per candidate. Median and p99 over repeats, and each model's median as a ratio to
Two-Tower's, measured side by side in one run (eval mode, no autograd).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from index_sync.index import LiveIndex
from model.build import build_model
from model.config import ModelConfig
from model.device import resolve_device
from model.features import FeatureEncoder
from model.ranker import SingleTowerRanker
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

CANDIDATES = (100, 1_000, 10_000)


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads ([serving] torch_threads; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = ModelConfig()
    encoder = FeatureEncoder(config.features)
    log = generate_synthetic_log(SyntheticLogConfig(events=300_000, seed=0, initial_items=12_000))
    ids, first = np.unique(log.column("item_id").to_numpy(), return_index=True)
    items = log.take(first)
    if ids.size < max(CANDIDATES):
        raise SystemExit(f"only {ids.size} distinct items for {max(CANDIDATES)} candidates")
    user_row = log.slice(0, 1)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__} ({torch.get_num_threads()} threads), {ids.size} items indexed, "
          f"{args.repeats} repeats")

    towers = {}
    for kind in ("two_tower", "inttower"):
        model = build_model(dataclasses.replace(config, kind=kind)).to(device).eval()
        with torch.no_grad():
            vectors = np.concatenate([
                model.encode_items(encoder.encode_tower(items.slice(s, 8192), "item").to(device)).cpu().numpy()
                for s in range(0, items.num_rows, 8192)
            ])
        live = LiveIndex(vectors.shape[1], vectors.shape[2])
        towers[kind] = (model, live.publish_full(ids, vectors))
    ranker = SingleTowerRanker(config).to(device).eval()
    item_inputs = encoder.encode_tower(items, "item")
    user_inputs = encoder.encode_tower(user_row, "user")

    rows = []
    rng = np.random.default_rng(0)
    for n in CANDIDATES:
        pick = rng.choice(ids.size, n, replace=False)
        candidates = ids[pick]
        result = {}
        for kind, (model, version) in towers.items():
            def request(model=model, version=version):
                with torch.no_grad():
                    user = model.encode_user(user_inputs.to(device))
                    vectors, _ = version.vectors(candidates)
                    return model.score(user, torch.from_numpy(vectors).to(device))
            result[kind] = _timed(request, args.repeats, device)

        def rank():
            with torch.no_grad():
                users = user_inputs.select(torch.zeros(n, dtype=torch.long)).to(device)
                return ranker.logits(users, item_inputs.select(torch.from_numpy(pick)).to(device))
        result["ranker"] = _timed(rank, args.repeats, device)
        rows.append((n, result))

    print("\n| candidates | Two-Tower p50 / p99 ms | IntTower p50 / p99 ms | single-tower ranker p50 / p99 ms | IntTower / Two-Tower | ranker / Two-Tower |")
    print("|---|---|---|---|---|---|")
    for n, r in rows:
        base = r["two_tower"][0]
        cells = [f"{r[k][0] * 1e3:.2f} / {r[k][1] * 1e3:.2f}" for k in ("two_tower", "inttower", "ranker")]
        print(f"| {n:,} | {cells[0]} | {cells[1]} | {cells[2]} | {r['inttower'][0] / base:.2f}x | {r['ranker'][0] / base:.2f}x |")
    print("(Two-Tower and IntTower: user tower once + gather from the index + score; ranker: the network per candidate)")


if __name__ == "__main__":
    main()
