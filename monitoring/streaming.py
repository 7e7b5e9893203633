"""Streaming quality metrics over the prequential predictions, in the spirit of river.

Each metric is a small object with ``update(labels, probabilities)`` (a batch at a
time: the trainer produces batches) and ``get()``. Windows are exact — the last N
events, no threshold approximation — and the state round-trips through
``state_dict`` so a restored daemon reports the same figures it checkpointed.
"""

from __future__ import annotations

import numpy as np

from monitoring.quality import log_loss, roc_auc


class _EventWindow:
    """The last ``size`` (label, probability) pairs in a ring buffer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.labels = np.zeros(size, dtype=np.int8)
        self.probabilities = np.zeros(size, dtype=np.float64)
        self.count = 0  # events ever seen
        self.position = 0

    def update(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        seen = int(np.asarray(labels).size)
        labels, probabilities = np.asarray(labels)[-self.size :], np.asarray(probabilities)[-self.size :]
        slots = (self.position + np.arange(labels.size)) % self.size
        self.labels[slots] = labels
        self.probabilities[slots] = probabilities
        self.position = int((self.position + labels.size) % self.size)
        self.count += seen

    def filled(self) -> tuple[np.ndarray, np.ndarray]:
        n = min(self.count, self.size)
        return self.labels[:n], self.probabilities[:n]

    def state_dict(self) -> dict:
        return {"size": self.size, "labels": self.labels.tolist(), "probabilities": self.probabilities.tolist(),
                "count": self.count, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if int(state["size"]) != self.size:
            return  # window size changed by config: start empty rather than mix sizes
        self.labels = np.asarray(state["labels"], dtype=np.int8)
        self.probabilities = np.asarray(state["probabilities"], dtype=np.float64)
        self.count, self.position = int(state["count"]), int(state["position"])


class RollingAUC(_EventWindow):
    """Exact ROC AUC over the last ``size`` events (NaN until both classes are present)."""

    def get(self) -> float:
        return roc_auc(*self.filled()) if self.count else float("nan")


class RollingLogLoss(_EventWindow):
    """Mean log loss over the last ``size`` events."""

    def get(self) -> float:
        return log_loss(*self.filled()) if self.count else float("nan")


class RollingCalibration(_EventWindow):
    """Mean prediction / observed click rate over the last ``size`` events (1 is calibrated)."""

    def get(self) -> float:
        labels, probabilities = self.filled()
        clicks = labels.mean() if labels.size else 0.0
        return float(probabilities.mean() / clicks) if clicks > 0 else float("nan")
