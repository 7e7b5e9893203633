"""Exact AUC, log loss and RelaImpr against brute-force definitions."""

import itertools
import math

import numpy as np
import pytest

from monitoring.quality import log_loss, rela_impr, roc_auc


def _auc_by_pairs(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 10, 300) / 10.0  # many ties
    assert roc_auc(labels, scores) == pytest.approx(_auc_by_pairs(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_log_loss_and_rela_impr():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert rela_impr(0.8974, 0.8697) == pytest.approx(((0.8974 - 0.5) / (0.8697 - 0.5) - 1) * 100)
