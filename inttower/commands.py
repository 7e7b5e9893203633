"""What each CLI command does, wired from the packages; no model or stream logic here."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from inttower.config import AppConfig
from model.experiment import split_rows, train_and_test
from model.features import FeatureEncoder
from stream.clicklog import read_click_log, write_click_log
from stream.movielens import import_movielens
from stream.synthetic import generate_synthetic_log


def import_movielens_log(path: Path, out: Path, config: AppConfig) -> None:
    started = time.perf_counter()
    table = import_movielens(path, config.data.movielens)
    write_click_log(table, out)
    positives = sum(table.column("label").to_pylist())
    print(
        f"wrote {out}: {table.num_rows} events, {positives / max(table.num_rows, 1):.1%} positive, "
        f"{time.perf_counter() - started:.1f} s"
    )


def write_synthetic_log(out: Path, config: AppConfig, events: int | None = None, seed: int | None = None) -> None:
    started = time.perf_counter()
    options = config.data.synthetic
    overrides = {k: v for k, v in {"events": events, "seed": seed}.items() if v is not None}
    table = generate_synthetic_log(dataclasses.replace(options, **overrides))
    write_click_log(table, out)
    print(f"wrote {out}: {table.num_rows} events, {time.perf_counter() - started:.1f} s")


def run_demo(config: AppConfig, workdir: Path, events: int | None = None) -> None:
    """Offline demo: synthetic log, time split, each configured model trained and tested."""
    log = workdir / "synthetic.parquet"
    write_synthetic_log(log, config, events=events or config.demo.events)
    table = read_click_log(log)
    data = FeatureEncoder(config.model.features).encode(table)
    train_config = dataclasses.replace(config.train, max_epochs=config.demo.max_epochs)
    demo = config.demo
    split = split_rows(len(data), demo.split, demo.test_fraction, train_config.validation_fraction, train_config.seed)
    how = "a seeded random split" if demo.split == "random" else "time order (test = the latest events)"
    print(f"{len(split.train)} training, {len(split.validation)} validation and {len(split.test)} test events by {how}")
    rows = []
    for kind in config.demo.models:
        result = train_and_test(dataclasses.replace(config.model, kind=kind), train_config, data, split, progress=True)
        rows.append((kind, result))
        print(f"  {kind:<10} test AUC {result.test.auc:.4f}  logloss {result.test.logloss:.4f}  ({result.seconds:.0f} s)")
    print("demo done:", ", ".join(f"{kind} AUC {r.test.auc:.4f}" for kind, r in rows))
