"""`promtool` checks of the compose stack's Prometheus config, alert rules and their unit tests.

promtool comes with the Debian package `prometheus` (DESIGN.md, "Real components"). CI
installs it, so there a missing promtool fails; elsewhere these tests skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import missing_system_package
from tests.monitoring.promql_expressions import (
    ALERTS_FILE,
    DOCKER_DIR,
    REPO_ROOT,
    alert_rules,
    dashboard_expressions,
)

PROMETHEUS_DIR = DOCKER_DIR / "prometheus"
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_system_package("promtool not found on PATH (install the Debian package `prometheus`: apt-get install -y prometheus)")
    return path


def run_promtool(promtool: str, *args: str | Path) -> str:
    proc = subprocess.run(
        [promtool, *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    output = f"$ promtool {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}"
    assert proc.returncode == 0, f"promtool exited {proc.returncode}:\n{output}"
    return output


def test_check_config(promtool: str) -> None:
    # Also checks every rule file the config references (alerts.yml).
    output = run_promtool(promtool, "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert "1 rule files found" in output, output


def test_check_rules(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS_FILE)
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    assert found, output
    # The line-based reader in promql_expressions.py sees every rule promtool sees.
    assert int(found.group(1)) == len(alert_rules()), output


def test_alert_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", PROMETHEUS_DIR / "alerts_test.yml")


def test_every_alert_has_a_unit_test() -> None:
    unit_tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    tested = set(re.findall(r"^\s*alertname:\s*(\S+)\s*$", unit_tests, re.MULTILINE))
    assert {rule.name for rule in alert_rules()} <= tested


def _recording_rules_file(path: Path, exprs: list[str]) -> Path:
    lines = ["groups:", "  - name: expressions", "    rules:"]
    for i, expr in enumerate(exprs):
        # Single-quoted YAML scalars: only a quote needs escaping (doubled).
        lines += [f"      - record: check:expr_{i}", "        expr: '" + expr.replace("'", "''") + "'"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_expressions()
    assert exprs
    output = run_promtool(promtool, "check", "rules", _recording_rules_file(tmp_path / "dashboard.yml", exprs))
    assert f"SUCCESS: {len(exprs)} rules found" in output, output


def test_alert_signals_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    signals = [rule.signal for rule in alert_rules()]
    output = run_promtool(promtool, "check", "rules", _recording_rules_file(tmp_path / "signals.yml", signals))
    assert f"SUCCESS: {len(signals)} rules found" in output, output
