"""The index sync's metrics: last completed job, syncs that published nothing, publishes."""

from __future__ import annotations

import time

from inttower.telemetry import Telemetry
from monitoring.config import MonitoringConfig
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.index_sync.sync_jobs import run_sync_job, small_sync


def test_skipped_syncs_are_counted_and_the_last_sync_moves_while_publishes_stop():
    sync = small_sync()
    telemetry = Telemetry(MonitoringConfig(port=0), ["inttower"])
    value = telemetry.metrics.registry.get_sample_value
    telemetry.on_index(sync)
    assert value("inttower_index_last_sync_timestamp_seconds") == 0.0  # no job yet: the alert's `> 0` leaves it out
    assert value("inttower_index_syncs_skipped_total", {"kind": "sync"}) == 0.0  # the series exists from the start
    sync.observe(generate_synthetic_log(SyntheticLogConfig(events=500, seed=2)))
    run_sync_job(sync)
    telemetry.on_index(sync)
    published = value("inttower_index_last_publish_timestamp_seconds")
    first_sync = value("inttower_index_last_sync_timestamp_seconds")
    assert published > 0 and first_sync > 0 and value("inttower_index_version") == 1
    time.sleep(0.01)
    run_sync_job(sync)
    run_sync_job(sync)
    telemetry.on_index(sync)
    telemetry.on_index(sync)  # counted once, however often telemetry looks
    assert value("inttower_index_syncs_skipped_total", {"kind": "sync"}) == 2.0
    assert value("inttower_index_syncs_skipped_total", {"kind": "full_refresh"}) == 0.0
    assert value("inttower_index_last_sync_timestamp_seconds") > first_sync
    assert value("inttower_index_last_publish_timestamp_seconds") == published
    assert value("inttower_index_version") == 1
