"""The CLI end to end: user errors are one line with no traceback; commands write real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.clicklog import read_click_log
from tests.conftest import REPO_ROOT


def _run(*args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inttower.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def _assert_one_line_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_config_is_one_line_naming_file_and_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[model]\nheads = -1\n")
    result = _run("data", "synthetic", str(tmp_path / "x.parquet"), "--config", str(config), "--events", "100")
    _assert_one_line_user_error(result, "bad.toml", "model.heads", ">= 1")


def test_missing_data_directory_is_one_line(tmp_path):
    result = _run("data", "movielens", str(tmp_path / "nowhere"), str(tmp_path / "out.parquet"))
    _assert_one_line_user_error(result, "nowhere")


def test_malformed_dat_line_names_file_and_line(tmp_path):
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n", encoding="latin-1")
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Animation|Children's|Comedy\n", encoding="latin-1")
    (tmp_path / "ratings.dat").write_text("1::1::5::978300760\n2::1::oops::978300761\n", encoding="latin-1")
    result = _run("data", "movielens", str(tmp_path), str(tmp_path / "out.parquet"))
    _assert_one_line_user_error(result, "ratings.dat", "line 2")
    assert not (tmp_path / "out.parquet").exists()


def test_download_reuses_a_copy_in_the_data_home(tmp_path):
    """`--download` finds a complete copy under $INTTOWER_DATA and imports it without fetching."""
    from tests.stream.test_movielens import write_ml1m

    write_ml1m(tmp_path / "data" / "ml-1m")
    out = tmp_path / "ml1m.parquet"
    result = _run("data", "movielens", "--download", "ml-1m", str(out), env={"INTTOWER_DATA": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert read_click_log(out).num_rows == 4
    assert str(tmp_path / "data" / "ml-1m") in result.stdout


def test_movielens_without_paths_or_download_is_one_line(tmp_path):
    _assert_one_line_user_error(_run("data", "movielens", str(tmp_path)), "PATH OUT", "--download")


def _unreachable_broker_config(tmp_path: Path) -> Path:
    from stream.broker import free_port

    config = tmp_path / "c.toml"
    config.write_text(f'[stream]\nbootstrap_servers = ["127.0.0.1:{free_port()}"]\nstartup_timeout_s = 1.0\n'
                      f'[daemon]\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n')
    return config


def test_unreachable_broker_is_one_line_without_library_chatter(tmp_path):
    """FAISS's loader lines and kafka-python's retries only with --verbose; by default one line."""
    config = _unreachable_broker_config(tmp_path)
    verbose = _run("--verbose", "train", "--config", str(config))
    assert verbose.returncode == 3
    assert "faiss.loader" in verbose.stderr and "kafka" in verbose.stderr  # what the default hides
    result = _run("train", "--config", str(config))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Kafka broker answered" in lines[0], result.stderr


def test_synthetic_command_writes_a_valid_click_log(tmp_path):
    out = tmp_path / "syn.parquet"
    result = _run("data", "synthetic", str(out), "--events", "5000", "--seed", "3")
    assert result.returncode == 0, result.stderr
    table = read_click_log(out)
    assert table.num_rows == 5000
    assert table.column("event_id")[0].as_py().startswith("syn-3-")


def test_synthetic_delays_write_a_feedback_log_that_replay_refuses_as_arrow(tmp_path):
    out = tmp_path / "fb.parquet"
    result = _run("data", "synthetic", str(out), "--events", "3000", "--delays")
    assert result.returncode == 0, result.stderr
    assert "click delays p50" in result.stdout
    table = read_click_log(out)
    clicked = table.column("click_ts").is_valid().to_pylist()
    assert clicked == [label == 1 for label in table.column("label").to_pylist()]
    delays = [c - t for c, t, k in zip(table.column("click_ts").to_pylist(), table.column("ts").to_pylist(), clicked) if k]
    assert min(delays) >= 0 and max(delays) > 10 * 300_000  # heavy-tailed: some far beyond the median
    replayed = _run("replay", str(out), "--topic", "clicks", "--format", "arrow", "--bootstrap", "127.0.0.1:1")
    _assert_one_line_user_error(replayed, "feedback log", "JSON")


def test_movielens_command_imports_ml100k(tmp_path, ml100k_dir):
    out = tmp_path / "ml.parquet"
    result = _run("data", "movielens", str(ml100k_dir), str(out))
    assert result.returncode == 0, result.stderr
    assert read_click_log(out).num_rows == 72855


@pytest.mark.slow
def test_demo_streams_through_a_real_broker_and_writes_its_report(tmp_path):
    result = _run("demo", "--events", "20000", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["events"] == 20000
    assert set(summary["models"]) == {"inttower", "two_tower"}
    for model in summary["models"].values():
        assert 0.5 < model["final_auc"] < 1.0 and model["final_logloss"] > 0
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "demo done" in result.stdout
