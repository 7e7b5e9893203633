"""Offline experiments: the paper's random split, a time split, and one train/test run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from model.build import build_model
from model.config import ModelConfig, TrainConfig
from model.device import resolve_device
from model.features import FeatureBatch
from model.offline import Evaluation, FitResult, evaluate, fit

Split = Literal["random", "time"]


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of a click log (time-ordered) for training, validation and test."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_rows(rows: int, kind: Split, test_fraction: float, validation_fraction: float, seed: int) -> SplitIndices:
    """Random: a seeded 80/20 shuffle (the paper's protocol). Time: the first 80% by time train.

    Validation is the last ``validation_fraction`` of the training rows: a random holdout
    for the random split, the latest training events for the time split. Test rows are
    never used for training, early stopping or any label statistic.
    """
    order = np.random.default_rng(seed).permutation(rows) if kind == "random" else np.arange(rows)
    n_test = int(round(rows * test_fraction))
    train_all, test = order[: rows - n_test], order[rows - n_test :]
    n_val = int(round(len(train_all) * validation_fraction))
    return SplitIndices(train=train_all[: len(train_all) - n_val], validation=train_all[len(train_all) - n_val :], test=test)


@dataclass(frozen=True)
class RunResult:
    test: Evaluation
    fit: FitResult
    user_tower_parameters: int
    seconds: float


def train_and_test(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: FeatureBatch,
    split: SplitIndices,
    progress: bool = False,
) -> RunResult:
    """Build a fresh model (seeded by ``train_config.seed``), fit it, score the test rows."""
    started = time.perf_counter()
    torch.manual_seed(train_config.seed)
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    model = build_model(model_config).to(resolve_device(train_config.device))
    result = fit(model, data.select(split.train), data.select(split.validation), train_config, progress)
    return RunResult(evaluate(model, data.select(split.test)), result, model.user_tower_parameters(), time.perf_counter() - started)
