"""Exact offline quality measures: ROC AUC (ties averaged) and log loss.

The streaming metrics build on these; they are plain numpy so every package can report
to monitoring without monitoring importing any of them.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact AUC as the Mann-Whitney statistic; NaN when only one class is present.

    Tied scores count one half, so the result does not depend on the order of ties.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank of each run of equal scores (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def rela_impr(auc: float, base_auc: float) -> float:
    """RelaImpr of paper eq 13, in percent: ((AUC - 0.5) / (AUC_base - 0.5) - 1) * 100."""
    return ((auc - 0.5) / (base_auc - 0.5) - 1.0) * 100.0
