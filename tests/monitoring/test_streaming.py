"""Rolling metrics equal the offline measures over exactly the last N events."""

import numpy as np
import pytest

from monitoring.quality import log_loss, roc_auc
from monitoring.streaming import RollingAUC, RollingCalibration, RollingLogLoss


@pytest.mark.parametrize("chunk", [1, 7, 50, 400])
def test_rolling_metrics_cover_exactly_the_last_window(chunk):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    probabilities = np.clip(labels * 0.3 + rng.random(1000) * 0.7, 0.01, 0.99)
    auc, loss, calibration = RollingAUC(100), RollingLogLoss(100), RollingCalibration(100)
    for start in range(0, 1000, chunk):
        for metric in (auc, loss, calibration):
            metric.update(labels[start : start + chunk], probabilities[start : start + chunk])
    assert auc.count == 1000
    assert auc.get() == pytest.approx(roc_auc(labels[-100:], probabilities[-100:]))
    assert loss.get() == pytest.approx(log_loss(labels[-100:], probabilities[-100:]))
    assert calibration.get() == pytest.approx(probabilities[-100:].mean() / labels[-100:].mean())


def test_state_round_trips():
    a = RollingAUC(10)
    a.update(np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.7]))
    b = RollingAUC(10)
    b.load_state_dict(a.state_dict())
    assert b.get() == a.get() and b.count == 4
    b.update(np.array([1]), np.array([0.1]))
    a.update(np.array([1]), np.array([0.1]))
    assert b.get() == a.get()


def test_empty_window_is_nan():
    assert np.isnan(RollingAUC(5).get()) and np.isnan(RollingLogLoss(5).get())
