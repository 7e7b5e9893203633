"""Concept-drift detection on the prequential log loss.

The stream is cut into blocks of N events; each block's mean log loss goes to a
Page-Hinkley test (river's) looking for an increase. Blocks keep the detector's input
nearly Gaussian and cost one update per N events; a detection resets the test so the
next change can be found too.
"""

from __future__ import annotations

import numpy as np
from river.drift import PageHinkley

from monitoring.quality import log_loss


class LoglossDriftDetector:
    """``update`` returns the number of drifts detected (0 or 1 per completed block)."""

    def __init__(self, block_events: int, threshold: float, delta: float, min_blocks: int) -> None:
        self.block_events = block_events
        self._detector = PageHinkley(min_instances=min_blocks, delta=delta, threshold=threshold, mode="up")
        self._labels: list[np.ndarray] = []
        self._probabilities: list[np.ndarray] = []
        self._pending = 0
        self.blocks = 0
        self.detections = 0

    def update(self, labels: np.ndarray, probabilities: np.ndarray) -> int:
        self._labels.append(np.asarray(labels))
        self._probabilities.append(np.asarray(probabilities))
        self._pending += int(np.asarray(labels).size)
        found = 0
        while self._pending >= self.block_events:
            y, p = np.concatenate(self._labels), np.concatenate(self._probabilities)
            block_y, block_p = y[: self.block_events], p[: self.block_events]
            self._labels, self._probabilities = [y[self.block_events :]], [p[self.block_events :]]
            self._pending -= self.block_events
            self.blocks += 1
            self._detector.update(log_loss(block_y, block_p))
            if self._detector.drift_detected:
                found += 1
        self.detections += found
        return found
