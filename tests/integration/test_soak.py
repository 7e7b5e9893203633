"""The soak bench's machinery on a small stream: a real broker and daemon process, a memory series, a fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.soak import Sample, SoakSettings, fit_growth, run_soak


def _sample(events: int, rss: float) -> Sample:
    return Sample(elapsed_s=0.0, events=events, produced=events, lag=0, rss_mib=rss, broker_rss_mib=10.0,
                  index_version=None, index_items=None)


def test_fit_leaves_out_warmup_and_measures_mib_per_million_events() -> None:
    warmup = [_sample(e, 100.0 + e / 1000) for e in (0, 100_000, 200_000)]  # steep start-up growth
    steady = [_sample(e, 500.0 + 3.0 * e / 1e6) for e in range(300_000, 1_000_001, 100_000)]
    fit = fit_growth(warmup + steady, total_events=1_000_000, warmup_fraction=0.25, flat_mib_per_m=5.0)
    assert fit.points == len(steady) and fit.warmup_events == 250_000
    assert fit.slope_mib_per_m == pytest.approx(3.0)
    assert fit.growth_mib == pytest.approx(2.1) and fit.flat
    assert "flat" in fit.verdict(5.0)
    growing = fit_growth(steady, 1_000_000, 0.25, flat_mib_per_m=1.0)
    assert not growing.flat and "GROWING" in growing.verdict(1.0)
    assert fit_growth(steady[:2], 1_000_000, 0.25, 5.0).slope_mib_per_m is None  # too few points: undecided


@pytest.mark.slow
def test_small_soak_samples_memory_and_fits_a_slope(tmp_path: Path) -> None:
    settings = SoakSettings(events=25_000, sample_s=1.0, out=tmp_path / "out", batch_events=512, chunk_events=5_000,
                            max_ahead_events=10_000, checkpoint_every_s=2.0, sync_interval_s=1.0,
                            full_refresh_interval_s=3.0, max_items=1_000, warmup_fraction=0.0, stall_s=40.0)
    result = run_soak(settings)
    assert result.daemon_exit == 0
    assert result.trained == 25_000
    assert result.checkpoints >= 1
    series = result.samples
    assert len(series) >= 3 and series[-1].events == 25_000
    assert [s.events for s in series] == sorted(s.events for s in series)
    assert all(s.rss_mib > 50 for s in series[-3:])  # a python + torch process, not a dead pid
    assert any(s.index_version for s in series)  # index syncs ran
    assert result.fit.slope_mib_per_m is not None and math.isfinite(result.fit.slope_mib_per_m)
    saved = json.loads((tmp_path / "out" / "soak.json").read_text())
    assert len(saved["samples"]) == len(series) and saved["verdict"].startswith("VERDICT")
    assert (tmp_path / "out" / "soak.png").stat().st_size > 0
    assert "stopped after 25000 events" in (tmp_path / "out" / "daemon.log").read_text()
