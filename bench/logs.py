"""The click logs the accuracy benches share: ML-100K with its config, or the synthetic stream with the defaults."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from inttower.config import load_config
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureBatch, FeatureEncoder
from stream.datasets import require_movielens
from stream.movielens import import_movielens
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log

REPO = Path(__file__).resolve().parents[1]
BENCH_LOGS = ("movielens", "synthetic")


@dataclass(frozen=True)
class BenchLog:
    """A time-ordered click log and the configs a bench trains on it with."""

    name: str
    table: pa.Table
    model: ModelConfig
    train: TrainConfig
    online: OnlineConfig


def load_bench_log(name: str, data: str | None, synthetic: SyntheticLogConfig) -> BenchLog:
    """``movielens``: ML-100K (``data``, else $INTTOWER_DATA or the cache) with `configs/movielens.toml`'s
    features, [train] and [online]; ``synthetic``: ``synthetic``'s stream with the embedded defaults."""
    if name == "movielens":
        config = load_config(REPO / "configs" / "movielens.toml")
        table = import_movielens(require_movielens("ml-100k", data), config.data.movielens)
        return BenchLog(name, table, config.model, config.train, config.online)
    if name == "synthetic":
        return BenchLog(name, generate_synthetic_log(synthetic), ModelConfig(), TrainConfig(), OnlineConfig())
    raise ValueError(f"unknown bench log {name!r}; choose from {', '.join(BENCH_LOGS)}")


@dataclass(frozen=True)
class EncodedLog:
    """A bench log encoded for its model's features, with its event times (ms)."""

    name: str
    model: ModelConfig
    train: TrainConfig
    online: OnlineConfig
    data: FeatureBatch
    ts_ms: np.ndarray


def encode_bench_log(log: BenchLog, train: TrainConfig | None = None) -> EncodedLog:
    """``log`` encoded once for all the runs of a bench (``train`` overrides the log's [train])."""
    data = FeatureEncoder(log.model.features).encode(log.table)
    return EncodedLog(log.name, log.model, train or log.train, log.online, data, log.table.column("ts").to_numpy())


def names_from(parser: argparse.ArgumentParser, text: str, choices: Sequence[str], what: str) -> list[str]:
    """A comma-separated command-line list, each name one of ``choices`` (else a usage error)."""
    names = text.split(",")
    for name in names:
        if name not in choices:
            parser.error(f"unknown {what} {name!r}; choose from {', '.join(choices)}")
    return names
