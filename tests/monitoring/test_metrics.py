"""Metric helpers: bulk histogram observation and drift detection on logloss blocks."""

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from monitoring.drift import LoglossDriftDetector
from monitoring.metrics import observe_many


def _lines(registry):
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line and "_sum" not in line]


def test_observe_many_equals_one_observe_per_value():
    bulk, single = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 1.0, 10.0)
    a = Histogram("x", "x", ["m"], buckets=buckets, registry=bulk)
    b = Histogram("x", "x", ["m"], buckets=buckets, registry=single)
    values = np.r_[np.random.default_rng(0).exponential(3, 1000), [0.1, 1.0, 10.0]]  # bounds are inclusive
    observe_many(a.labels("m"), values)
    for value in values:
        b.labels("m").observe(value)
    assert _lines(bulk) == _lines(single)
    assert abs(bulk.get_sample_value("x_sum", {"m": "m"}) - values.sum()) < 1e-6


def _stream(rng, blocks, loss_rate):
    labels = rng.integers(0, 2, blocks * 1000)
    p = np.where(labels == 1, 1 - loss_rate, loss_rate) + rng.normal(0, 0.05, labels.size)
    return labels, np.clip(p, 0.01, 0.99)


def test_drift_detector_fires_after_a_rise_in_logloss_and_not_on_a_stationary_stream():
    rng = np.random.default_rng(1)
    calm = LoglossDriftDetector(1000, threshold=0.1, delta=0.01, min_blocks=10)
    labels, p = _stream(rng, 60, 0.3)
    assert sum(calm.update(labels[i : i + 512], p[i : i + 512]) for i in range(0, labels.size, 512)) == 0
    assert calm.blocks == 60

    shifted = LoglossDriftDetector(1000, threshold=0.1, delta=0.01, min_blocks=10)
    before, p_before = _stream(rng, 40, 0.3)
    after, p_after = _stream(rng, 20, 0.45)
    labels, p = np.r_[before, after], np.r_[p_before, p_after]
    fired = [i for i in range(0, labels.size, 500) if shifted.update(labels[i : i + 500], p[i : i + 500])]
    assert fired and min(fired) >= 40_000 - 500 and min(fired) < 45_000, fired
