"""bench.freshness: batches cut by event-time span as the daemon cuts a replay, and a tiny real run."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bench.freshness import main, span_batches, span_ms, with_settings
from bench.logs import EncodedLog
from model.config import ModelConfig, OnlineConfig, TrainConfig


def test_spans_cut_batches_by_event_time_and_count() -> None:
    ts = np.array([0, 10, 20, 100, 101, 102, 103, 500], dtype=np.int64)
    assert span_batches(ts, None, 2048) == [slice(i, i + 1) for i in range(8)]
    assert span_batches(ts, 20, 2048) == [slice(0, 3), slice(3, 7), slice(7, 8)]
    assert span_batches(ts, 20, 2) == [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 7), slice(7, 8)]
    assert span_batches(ts, 10_000, 2048) == [slice(0, 8)]
    for batch in span_batches(ts, 50, 3):
        assert ts[batch.stop - 1] - ts[batch.start] <= 50 and batch.stop - batch.start <= 3


def test_span_names() -> None:
    assert [span_ms(t) for t in ("event", "500ms", "5m", "1h", "24h", "2d")] == [
        None, 500, 300_000, 3_600_000, 86_400_000, 172_800_000]
    with pytest.raises(argparse.ArgumentTypeError):
        span_ms("soon")


def test_tiny_run_prints_a_freshness_table_and_plots_it(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    main(["--datasets", "synthetic", "--synthetic-events", "400", "--models", "lr,two_tower", "--spans", "event,1h",
          "--seeds", "1", "--threads", "1", "--plot", str(tmp_path / "curve.png")])
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| lr") or line.startswith("| two_tower")]
    assert len(rows) == 4
    for row in rows:
        auc = float(row.split("|")[5].split()[0])
        assert 0.0 <= auc <= 1.0
    assert "| lr | event | 1 | 400 |" in out  # one seed, one step per event


def test_settings_change_the_towers_config_for_an_ablation() -> None:
    ds = EncodedLog("x", ModelConfig(), TrainConfig(), OnlineConfig(), None, np.zeros(0, np.int64))
    changed = with_settings(ds, ['model.normalization="batch"', "model.wide=false", "model.hidden=[8, 4]",
                                 'train.embedding_optimizer="adam"'])
    assert (changed.model.normalization, changed.model.wide, changed.model.hidden) == ("batch", False, (8, 4))
    assert changed.train.embedding_optimizer == "adam" and changed.train.learning_rate == TrainConfig().learning_rate
    for bad in ("wide=false", "online.cir_window=3", "model.wide"):
        with pytest.raises(argparse.ArgumentTypeError):
            with_settings(ds, [bad])


def test_split_runs_saved_then_merged_pool_their_seeds(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    common = ["--datasets", "synthetic", "--synthetic-events", "300", "--models", "lr", "--threads", "1"]
    main(common + ["--spans", "1h", "--seeds", "2", "--save", str(tmp_path / "a.json")])
    main(common + ["--spans", "6h", "--seeds", "1", "--save", str(tmp_path / "b.json")])
    first = capsys.readouterr().out
    main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--plot", str(tmp_path / "merged.png")])
    merged = capsys.readouterr().out
    assert (tmp_path / "merged.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in merged.splitlines() if line.startswith("| lr")]
    assert [row.split("|")[2].strip() for row in rows] == ["1h", "6h"]
    for row in rows:  # each merged row is the row its own run printed: same seeds pooled, same figures
        assert row in first
    assert "±" in rows[0] and "±" not in rows[1]  # two seeds pooled against one
