"""The click logs the accuracy benches share: ML-100K with its config, or the synthetic stream with the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from inttower.config import load_config
from model.config import ModelConfig, OnlineConfig, TrainConfig
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
