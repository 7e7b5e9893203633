"""Per-step cost of online training at small batches: the paper's towers against the defaults.

    python -m bench.step_cost [--batches 1,16] [--steps 1500] [--rounds 3] [--threads 1]

One prequential step (score, then one optimizer step) on batches of 1 and 16 events
from the synthetic stream, for IntTower and the logistic regression: the paper's towers
(BatchNorm, one Adam over everything) and the defaults (StreamNorm, per-side scalars,
row-wise Adagrad tables on sparse gradients, fused Adam). All variants run in the same
process, interleaved round by round, so the ratios compare like with like; the table
shows the median events/s over rounds and the ratio to the paper's towers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from model.build import build_model
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.online import OnlineTrainer
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

PAPER_MODEL = {"normalization": "batch", "wide": False}
PAPER_TRAIN = {"embedding_optimizer": "adam"}
VARIANTS: dict[str, tuple[dict, dict]] = {
    "IntTower, paper's towers": ({"kind": "inttower", **PAPER_MODEL}, PAPER_TRAIN),
    "IntTower, defaults": ({"kind": "inttower"}, {}),
    "Two-Tower, paper's towers": ({"kind": "two_tower", **PAPER_MODEL}, PAPER_TRAIN),
    "Two-Tower, defaults": ({"kind": "two_tower"}, {}),
    "LR, Adam": ({"kind": "lr"}, PAPER_TRAIN),
}


def events_per_second(trainer: OnlineTrainer, batches: list) -> float:
    started = time.perf_counter()
    for batch in batches:
        trainer.step(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (events)")
    parser.add_argument("--steps", type=int, default=1500, help="steps per variant, batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batches.split(",")]
    table = generate_synthetic_log(SyntheticLogConfig(events=max(sizes) * args.steps, seed=0))
    data = FeatureEncoder(ModelConfig().features).encode(table)
    rates: dict[tuple[str, int], list[float]] = {}
    trainers = {}
    for name, (model_changes, train_changes) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(ModelConfig(), **model_changes))
        trainers[name] = OnlineTrainer(model, dataclasses.replace(TrainConfig(), **train_changes), OnlineConfig())
        trainers[name].step(data.select(slice(0, 64)))  # warm-up: allocations, bias start
    for _ in range(args.rounds):
        for size in sizes:
            batches = [data.select(slice(i * size, (i + 1) * size)) for i in range(args.steps)]
            for name, trainer in trainers.items():
                rates.setdefault((name, size), []).append(events_per_second(trainer, batches))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} steps x {args.rounds} rounds")
    print("| model | batch | events/s (median) | vs the paper's towers |\n|---|---|---|---|")
    for size in sizes:
        for name in VARIANTS:
            rate = statistics.median(rates[(name, size)])
            base_name = name.split(",")[0] + ", paper's towers"
            base = statistics.median(rates[(base_name, size)]) if (base_name, size) in rates else None
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"| {name} | {size} | {rate:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
