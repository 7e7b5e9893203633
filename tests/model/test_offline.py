"""Splits keep test rows out of training; offline training learns real data."""

import dataclasses

import numpy as np
import pytest

from inttower.config import load_config
from model.experiment import split_rows, train_and_test
from model.features import FeatureEncoder
from stream.movielens import import_movielens
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("kind", ["random", "time"])
def test_split_is_a_disjoint_partition(kind):
    s = split_rows(1000, kind, 0.2, 0.1, seed=3)
    together = np.concatenate([s.train, s.validation, s.test])
    assert sorted(together.tolist()) == list(range(1000))
    assert len(s.test) == 200 and len(s.validation) == 80


def test_time_split_trains_on_the_past_only():
    s = split_rows(1000, "time", 0.2, 0.1, seed=0)
    assert s.train.max() < s.validation.min() <= s.validation.max() < s.test.min()


def test_random_split_depends_on_seed():
    assert not np.array_equal(split_rows(100, "random", 0.2, 0.1, 0).test, split_rows(100, "random", 0.2, 0.1, 1).test)


@pytest.mark.slow
def test_inttower_learns_movielens_in_two_epochs(ml100k_dir):
    config = load_config(REPO_ROOT / "configs" / "movielens.toml")
    data = FeatureEncoder(config.model.features).encode(import_movielens(ml100k_dir, config.data.movielens))
    split = split_rows(len(data), "random", 0.2, 0.1, seed=0)
    train = dataclasses.replace(config.train, max_epochs=2)
    result = train_and_test(config.model, train, data, split)
    assert result.test.auc > 0.82, result
    assert result.fit.epochs_run == 2
