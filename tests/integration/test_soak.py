"""The soak bench's machinery on a small stream: a real broker and daemon process, a memory series, a fit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest

import numpy as np

from bench.soak import (MEMORY_RE, PRESETS, Sample, SoakResult, SoakSettings, baseline_slope, save_result, event_count,
                        fit_growth, fit_slope,
                        layer_slopes, load_result, main, medians_by_million, run_soak)
from monitoring.memory import MallocInfo, MemoryReading, PeriodicTrim


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
    assert fit.ci_low == pytest.approx(3.0) and fit.ci_high == pytest.approx(3.0)  # a perfect line: no doubt
    assert "flat" in fit.verdict(5.0)
    growing = fit_growth(steady, 1_000_000, 0.25, flat_mib_per_m=1.0)
    assert growing.flat is False and "GROWING" in growing.verdict(1.0)
    assert fit_growth(steady[:2], 1_000_000, 0.25, 5.0).slope_mib_per_m is None  # too few points: undecided


def test_slope_interval_widens_with_autocorrelated_noise_and_covers_the_truth() -> None:
    rng = np.random.default_rng(0)
    x = np.linspace(0, 20, 200)
    white = 1.5 * x + rng.normal(0, 5.0, x.size)
    walk = 1.5 * x + np.cumsum(rng.normal(0, 1.0, x.size))  # a staircase-like, strongly correlated series
    plain, correlated = fit_slope(x, white), fit_slope(x, walk)
    assert plain.low < 1.5 < plain.high
    assert correlated.effective_points < plain.effective_points / 5
    assert correlated.high - correlated.low > 2 * (plain.high - plain.low)
    assert fit_slope(x[:2], white[:2]) is None


def test_undecided_when_the_interval_straddles_the_threshold() -> None:
    rng = np.random.default_rng(1)
    noisy = [_sample(e, 500.0 + 2.0 * e / 1e6 + rng.normal(0, 20.0)) for e in range(0, 1_000_001, 100_000)]
    fit = fit_growth(noisy, 1_000_000, 0.0, flat_mib_per_m=2.0)
    assert fit.flat is None and "undecided" in fit.verdict(2.0)


def test_memory_report_line_is_parsed_by_layer() -> None:
    reading = MemoryReading(900 * 2**20, 700 * 2**20, MallocInfo(500 * 2**20, 10 * 2**20, 300 * 2**20, 210 * 2**20, 0),
                            3 * 2**20, "mimalloc", 40 * 2**20, 123_456)
    line = f"12:00:00 inttower.daemon memory at 1234 events: {reading.line()}; sizes: history points (x) 3"
    trimmed = PeriodicTrim(every_s=1.0, now=0.0)
    trimmed.maybe_trim(now=1.0)
    assert MEMORY_RE.search(line.replace("; sizes:", f"; {trimmed.line()}; sizes:"))["sizes"] == "history points (x) 3"
    found = MEMORY_RE.search(line)
    assert found is not None
    assert float(found["rss"]) == 900.0 and float(found["anon"]) == 700.0 and float(found["in_use"]) == 300.0 and float(found["free"]) == 210.0
    assert float(found["arrow"]) == 3.0 and float(found["traced"]) == 40.0 and found["sizes"] == "history points (x) 3"
    assert found["blocks"] == "123,456"
    jemalloc = MemoryReading(900 * 2**20, 700 * 2**20, MallocInfo(400 * 2**20, 0, 250 * 2**20, 20 * 2**20, 0, "jemalloc"),
                             3 * 2**20, "mimalloc", None, 5)
    found = MEMORY_RE.search(f"memory at 9 events: {jemalloc.line()}; sizes: none")
    assert "malloc (jemalloc) in use" in jemalloc.line() and float(found["free"]) == 20.0 and found["allocator"] == "jemalloc"
    reports = [{"events": float(e), "rss": 900.0 + e / 1e6, "in_use": 300.0} for e in range(0, 5_000_001, 500_000)]
    slopes = layer_slopes(reports, warmup_events=0)
    assert slopes["RSS"].slope == pytest.approx(1.0) and slopes["malloc in use"].slope == pytest.approx(0.0, abs=1e-9)


def test_baseline_slope_reads_the_level_between_checkpoint_spikes_and_still_sees_growth() -> None:
    """Spikes (one sample in ten, +150 MiB, more of them late) tilt the all-samples fit, not the medians'."""
    events = range(100_000, 12_000_001, 50_000)
    spiky = [_sample(e, 900.0 + (150.0 if i % (10 if e < 6_000_000 else 5) == 0 else 0.0)) for i, e in enumerate(events)]
    assert fit_growth(spiky, 12_000_000, 0.2, 2.0).slope_mib_per_m > 1.0  # the spikes alone look like growth
    flat = baseline_slope(spiky, warmup_events=2_400_000)
    assert flat is not None and abs(flat.slope) < 0.1 and flat.points == 9
    growing = [_sample(e, x.rss_mib + 3.0 * e / 1e6) for e, x in zip(events, spiky)]
    grown = baseline_slope(growing, warmup_events=2_400_000)
    assert grown is not None and grown.low > 2.5 and grown.high < 3.5


def test_a_saved_run_is_refitted_with_a_later_warmup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settling = [_sample(e, 900.0 + 100.0 * (1 - e / 3e6)) for e in range(100_000, 3_000_001, 100_000)]  # shrinks to 900
    flat = [_sample(e, 900.0) for e in range(3_100_000, 10_000_001, 100_000)]
    flat[-1] = dataclasses.replace(flat[-1], broker_rss_mib=math.nan)  # the broker already gone: saved as null
    settings = SoakSettings(events=10_000_000, out=tmp_path, warmup_fraction=0.2, daemon_env=("MALLOC_ARENA_MAX=2",))
    fit = fit_growth(settling + flat, settings.trained_target, 0.2, 2.0)
    save_result(SoakResult(settings, settling + flat, fit, 10_000_000, 100.0, 3, 0, 0))
    assert fit.flat is not True  # the settling tail is inside a 20% warm-up's fit
    refitted = load_result(tmp_path / "soak.json", warmup_fraction=0.35)
    assert refitted.fit.flat is True and refitted.fit.warmup_events == 3_500_000
    assert refitted.settings.daemon_env == ("MALLOC_ARENA_MAX=2",) and refitted.settings.out == tmp_path
    assert load_result(tmp_path / "soak.json").fit.warmup_events == 2_000_000  # the saved run's own warm-up
    main(["--refit", str(tmp_path / "soak.json"), "--warmup-fraction", "0.35"])
    printed = capsys.readouterr().out
    assert "VERDICT: flat" in printed and "1M 982, 2M 948, 3M 915, 4M 900" in printed


def test_rss_medians_are_taken_per_million_events() -> None:
    samples = [_sample(e, float(e // 1000)) for e in (1, 500_000, 1_000_000, 1_000_001, 1_200_000, 2_500_000)]
    assert medians_by_million(samples + [_sample(0, 5.0), _sample(3, math.nan)]) == [
        (1_000_000, 500.0), (2_000_000, 1_100.0), (3_000_000, 2_500.0)]


@pytest.mark.slow
def test_small_soak_samples_memory_and_fits_a_slope(tmp_path: Path) -> None:
    settings = SoakSettings(events=25_000, sample_s=1.0, out=tmp_path / "out", batch_events=512, chunk_events=5_000,
                            max_ahead_events=10_000, checkpoint_every_s=2.0, sync_interval_s=1.0,
                            full_refresh_interval_s=3.0, max_items=1_000, warmup_fraction=0.0, stall_s=40.0,
                            memory_report_s=1.0)
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
    assert result.memory and result.memory[-1]["rss"] > 50  # the daemon's memory reports were read
    assert "history points" in result.sizes and "catalogue items" in result.sizes


def test_event_counts_read_with_suffixes_and_bad_ones_are_refused() -> None:
    assert [event_count(t) for t in ("20M", "500k", "2.5M", "1000")] == [20_000_000, 500_000, 2_500_000, 1000]
    for bad in ("x", "0", "1.5", "-3M"):
        with pytest.raises(argparse.ArgumentTypeError):
            event_count(bad)
    assert PRESETS["long"][0] >= 20_000_000  # the acceptance runs' length
