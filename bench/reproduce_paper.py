"""Reproduce the paper's offline comparison (Table 2 and the ablations) on MovieLens.

    python -m bench.reproduce_paper                      # ML-100K: --data, $INTTOWER_DATA or the download cache
    python -m bench.reproduce_paper --data PATH/ml-1m    # a full ML-1M copy
    python -m bench.reproduce_paper --data synthetic     # the synthetic click log

Prints one table per split (the paper's seeded random 80/20, and a time split: first
80% of events by time for training): LR, Two-Tower, IntTower and IntTower without
Light-SE / FE-Block / CIR, each over several seeds (mean and spread), with AUC, logloss,
RelaImpr over Two-Tower (eq 13), user-tower parameters and seconds per epoch. Label
statistics are never computed (no leakage from evaluation rows by construction).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from inttower.config import AppConfig, load_config
from model.config import ModelConfig
from model.experiment import RunResult, split_rows, train_and_test
from model.features import FeatureEncoder
from monitoring.quality import rela_impr
from stream.datasets import require_movielens
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log

REPO = Path(__file__).resolve().parents[1]
SMALL_DATA_ROWS = 500_000  # below this, batch 2048 gives too few steps an epoch
SMALL_BATCH = 512

VARIANTS: dict[str, dict] = {
    "LR": {"kind": "lr"},
    "Two-Tower": {"kind": "two_tower"},
    "IntTower": {"kind": "inttower"},
    "IntTower w/o Light-SE": {"kind": "inttower", "light_se": "off"},
    "IntTower w/o FE-Block": {"kind": "inttower", "fe_block": False},
    "IntTower w/o CIR": {"kind": "inttower", "cir_weight": 0.0},
}


def _load(data: str, config: AppConfig):
    if data == "synthetic":
        return generate_synthetic_log(config.data.synthetic), "synthetic log"
    folder = require_movielens("ml-100k", data)
    return import_movielens(folder, config.data.movielens), str(folder)


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _print_table(split: str, results: dict[str, list[RunResult]], batch_size: int) -> None:
    base_auc = statistics.fmean(r.test.auc for r in results["Two-Tower"]) if "Two-Tower" in results else None
    print(f"\n### {split} split (batch {batch_size}, {len(next(iter(results.values())))} seeds: mean ± std)")
    print("| model | AUC | logloss | RelaImpr vs Two-Tower | user-tower params | s/epoch | epochs kept |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        auc, auc_sd = _summary([r.test.auc for r in runs])
        loss, loss_sd = _summary([r.test.logloss for r in runs])
        impr = f"{rela_impr(auc, base_auc):+.2f}%" if base_auc is not None else "n/a"
        secs = statistics.fmean(r.fit.seconds_per_epoch for r in runs)
        epochs = ",".join(str(r.fit.best_epoch) for r in runs)
        params = runs[0].user_tower_parameters
        print(f"| {name} | {auc:.4f} ± {auc_sd:.4f} | {loss:.4f} ± {loss_sd:.4f} | {impr} | {params:,} | {secs:.1f} | {epochs} |")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MovieLens directory, or 'synthetic' (default: ml-100k from $INTTOWER_DATA or the cache)")
    parser.add_argument("--config", default=str(REPO / "configs" / "movielens.toml"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--splits", default="random,time")
    parser.add_argument("--models", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--max-epochs", type=int, help="override [train] max_epochs (smoke runs)")
    parser.add_argument("--limit-rows", type=int, help="use only the first N events (smoke runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    if args.data == "synthetic" and Path(args.config) == REPO / "configs" / "movielens.toml":
        config = load_config(REPO / "configs" / "synthetic.toml")
    started = time.perf_counter()
    table, source = _load(args.data, config)
    if args.limit_rows:
        table = table.slice(0, args.limit_rows)
    data = FeatureEncoder(config.model.features).encode(table)
    n_train = int(len(data) * 0.8)
    batch_size = config.train.batch_size if n_train >= SMALL_DATA_ROWS else min(config.train.batch_size, SMALL_BATCH)
    train = dataclasses.replace(config.train, batch_size=batch_size, threads=args.threads or config.train.threads)
    if args.max_epochs:
        train = dataclasses.replace(train, max_epochs=args.max_epochs)
    print(f"data: {source}: {len(data)} events, {float(data.labels.mean()):.1%} positive; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; Adam lr {train.learning_rate}, batch {batch_size}"
          f"{' (small data set: paper uses 2048)' if batch_size != 2048 else ''}, early stopping on validation AUC "
          f"(last {train.validation_fraction:.0%} of training rows, patience {train.patience}, max {train.max_epochs} epochs)")
    names = [n.strip() for n in args.models.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)}")
    for split in args.splits.split(","):
        results: dict[str, list[RunResult]] = {name: [] for name in names}
        for seed in range(args.seeds):
            indices = split_rows(len(data), split, 0.2, train.validation_fraction, seed)
            for name in names:
                model_config: ModelConfig = dataclasses.replace(config.model, **VARIANTS[name])
                run = train_and_test(model_config, dataclasses.replace(train, seed=seed), data, indices)
                results[name].append(run)
                print(f"  [{split} seed {seed}] {name}: AUC {run.test.auc:.4f} logloss {run.test.logloss:.4f} "
                      f"(best epoch {run.fit.best_epoch}/{run.fit.epochs_run}, {run.seconds:.0f} s)", flush=True)
        _print_table(split, results, batch_size)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
