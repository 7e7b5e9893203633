"""`inttower fit` / `eval`: chunked history, the fitted checkpoint and the warm-start contract."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from inttower.config import AppConfig, DaemonConfig
from inttower.daemon import TrainingDaemon
from model.batch_fit import evaluate_log, fit_log, save_fit
from model.config import ModelConfig, OnlineConfig, TrainConfig
from model.features import FeatureEncoder
from model.offline import predict
from model.warm_start import WarmStartError, find_checkpoint, load_trainer_states
from monitoring.config import MonitoringConfig
from monitoring.quality import roc_auc
from stream.clicklog import ClickLogError, ClickLogScan, write_click_log
from stream.event_time import parse_event_time
from stream.synthetic import SyntheticLogConfig, generate_synthetic_log
from tests.conftest import REPO_ROOT

SMALL = ModelConfig(hidden=(32, 16), embedding_dim=8, heads=2, head_dim=8)
TRAIN = TrainConfig(threads=1, max_epochs=2, batch_size=256, fit_chunk_events=700)


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[pa.Table, Path]:
    """4,000 synthetic events written as a directory of three Parquet files (a partitioned log)."""
    table = generate_synthetic_log(SyntheticLogConfig(events=4000, seed=3))
    folder = tmp_path_factory.mktemp("log")
    for i, (start, stop) in enumerate(((0, 1500), (1500, 2600), (2600, 4000))):
        write_click_log(table.slice(start, stop - start), folder / f"part-{i}.parquet")
    return table, folder


def test_scan_reads_a_directory_in_order_in_bounded_chunks(history):
    table, folder = history
    scan = ClickLogScan(folder, chunk_rows=700)
    chunks = list(scan.chunks())
    assert scan.rows() == 4000
    assert max(c.num_rows for c in chunks) < 2 * 700 and len(chunks) >= 4
    assert pa.concat_tables(chunks).column("event_id").to_pylist() == table.column("event_id").to_pylist()
    assert [c.num_rows for c in scan.chunks(100, 900)] == [800]


def test_scan_time_range_and_event_time_parsing(history):
    table, folder = history
    ts = table.column("ts").to_numpy()
    since, until = int(ts[1000]), int(ts[3000])
    scan = ClickLogScan(folder, 700, since, until)
    got = pa.concat_tables(scan.chunks()).column("ts").to_numpy()
    assert scan.rows() == int(((ts >= since) & (ts < until)).sum()) == got.size
    assert got.min() >= since and got.max() < until
    assert parse_event_time("2026-11-30T12:00:00Z") == parse_event_time("2026-11-30T12:00:00") == 1796040000000
    assert parse_event_time("1700000000000") == 1700000000000
    with pytest.raises(ValueError, match="epoch milliseconds or ISO-8601"):
        parse_event_time("yesterday")
    with pytest.raises(ClickLogError, match="no such"):
        ClickLogScan(folder / "missing").rows()


def test_fit_writes_a_checkpoint_the_daemon_starts_from_bit_identically(history, tmp_path):
    table, folder = history
    until = int(table.column("ts")[3000].as_py())
    scan = ClickLogScan(folder, TRAIN.fit_chunk_events, until_ms=until)
    done = fit_log(scan, SMALL, TRAIN, OnlineConfig(), progress=False)
    assert done.train_events + done.validation.events == 3000
    assert done.watermark_ms == int(table.column("ts").to_numpy()[:3000].max()) < until
    assert done.trainer.steps == done.result.steps > 0
    written = save_fit(done, str(tmp_path / "fit"), SMALL, scan)
    assert written.metadata["origin"] == "fit" and written.metadata["watermark_ms"] == done.watermark_ms

    app = AppConfig(model=SMALL, train=TRAIN, monitoring=MonitoringConfig(enabled=False),
                    daemon=DaemonConfig(checkpoint_dir=str(tmp_path / "own"), init_from=str(tmp_path / "fit")))
    daemon = TrainingDaemon(app)
    assert daemon.restore() is False  # nothing of its own: warm start, not a restore
    assert daemon.init_watermark_ms == done.watermark_ms
    fitted, started = done.trainer.state_dict(), daemon.slots[0].trainer.state_dict()
    assert fitted["model"].keys() == started["model"].keys()
    assert all(torch.equal(fitted["model"][k], started["model"][k]) for k in fitted["model"])
    assert started["steps"] == fitted["steps"]
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(fitted["optimizer"]["dense"]["state"].values(), started["optimizer"]["dense"]["state"].values())]
    assert moments and all(torch.equal(a, b) for a, b in moments)


def test_eval_scores_every_event_of_the_range_like_predict(history, tmp_path):
    table, folder = history
    scan = ClickLogScan(folder, TRAIN.fit_chunk_events)
    done = fit_log(scan, SMALL, TRAIN, OnlineConfig(), progress=False)
    checkpoint = save_fit(done, str(tmp_path / "fit"), SMALL, scan)
    since = int(table.column("ts")[2000].as_py())
    quality = evaluate_log(find_checkpoint(tmp_path / "fit"), ClickLogScan(folder, 700, since_ms=since), SMALL)["inttower"]
    rows = table.filter(pa.compute.greater_equal(table.column("ts"), since))
    batch = FeatureEncoder(SMALL.features).encode(rows)
    probabilities = predict(done.trainer.model, batch)
    assert quality.events == rows.num_rows
    assert quality.auc == pytest.approx(roc_auc(batch.labels.numpy(), probabilities), abs=1e-9)
    assert quality.calibration == pytest.approx(probabilities.sum() / batch.labels.numpy().sum(), rel=1e-5)
    assert checkpoint.path.name.startswith("ckpt-")


def test_a_checkpoint_of_another_model_config_is_refused_naming_what_differs(history, tmp_path):
    _, folder = history
    scan = ClickLogScan(folder, TRAIN.fit_chunk_events)
    save_fit(fit_log(scan, SMALL, dataclasses.replace(TRAIN, max_epochs=1), OnlineConfig(), progress=False),
             str(tmp_path / "fit"), SMALL, scan)
    found = find_checkpoint(tmp_path / "fit")
    other = dataclasses.replace(SMALL, embedding_dim=16)
    with pytest.raises(WarmStartError, match="embedding_dim 8 in the checkpoint, 16 here"):
        load_trainer_states(found, other, ["inttower"], torch.device("cpu"))
    fewer = dataclasses.replace(SMALL, features=tuple(f for f in SMALL.features if f.name != "price"))
    with pytest.raises(WarmStartError, match="feature spec differs .*only in the checkpoint: price"):
        load_trainer_states(found, fewer, ["inttower"], torch.device("cpu"))
    with pytest.raises(WarmStartError, match="no complete checkpoint"):
        find_checkpoint(tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inttower.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def _toml(path: Path, embedding_dim: int) -> Path:
    path.write_text(f"""
[model]
hidden = [32, 16]
embedding_dim = {embedding_dim}
heads = 2
head_dim = 8
[train]
threads = 1
max_epochs = 1
batch_size = 256
[monitoring]
enabled = false
[daemon]
checkpoint_dir = "{path.parent / 'own'}"
""")
    return path


def test_fit_and_eval_commands_and_a_mismatch_is_one_line_exit_2(history, tmp_path):
    table, folder = history
    config = _toml(tmp_path / "c.toml", 8)
    until = int(table.column("ts")[3000].as_py())
    fitted = _cli("fit", str(folder), "--config", str(config), "--out", str(tmp_path / "fit"), "--until", str(until))
    assert fitted.returncode == 0, fitted.stderr
    assert "| inttower |" in fitted.stdout and "inttower train --init-from" in fitted.stdout
    evaluated = _cli("eval", str(tmp_path / "fit"), str(folder), "--config", str(config), "--from", str(until))
    assert evaluated.returncode == 0, evaluated.stderr
    row = next(line for line in evaluated.stdout.splitlines() if line.startswith("| inttower |"))
    assert row.split("|")[5].strip() == str(table.num_rows - 3000)
    refused = _cli("train", "--config", str(_toml(tmp_path / "other.toml", 16)), "--init-from", str(tmp_path / "fit"))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "embedding_dim 8 in the checkpoint, 16 here" in refused.stderr
    assert np.isfinite(float(row.split("|")[2]))
