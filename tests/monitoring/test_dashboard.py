"""Static checks of the Grafana dashboard, the alert rules' shape and the compose stack's wiring.

Whether every query returns data from a real run is tests/integration's job; here: the
JSON is a well-formed dashboard, every panel queries the provisioned Prometheus with an
expression over metrics that `monitoring/metrics.py` defines, and the files that must
agree with each other (datasource uid, ports, paths) do.
"""

from __future__ import annotations

import re

import pytest

from inttower.config import load_config
from tests.monitoring.promql_expressions import (
    DATASOURCE_UID,
    DOCKER_DIR,
    alert_rules,
    alert_signals,
    dashboard_expressions,
    dashboard_files,
    exported_metric_names,
    iter_panels,
    load_dashboard,
    metric_names,
    split_comparison,
)

GRAFANA_DIR = DOCKER_DIR / "grafana"
KNOWN_NAMES = exported_metric_names() | {"up"}


@pytest.fixture(scope="module", params=[p.name for p in dashboard_files()])
def dashboard(request) -> dict:
    return load_dashboard(GRAFANA_DIR / "dashboards" / request.param)


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in dashboard_files()] == ["inttower.json"]
    assert load_dashboard(dashboard_files()[0])["uid"] == "inttower"


def test_dashboard_shape(dashboard: dict) -> None:
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("templating", {}).get("list", []) == []  # queries stay runnable as they are
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [panel["title"] for panel in iter_panels(dashboard) if panel["type"] == "row"]
    assert rows == ["Model quality", "Throughput and latency", "Kafka lag", "Index freshness", "Errors", "Memory", "Serving",
                    "Delayed feedback"]


def test_panels_do_not_overlap(dashboard: dict) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict) -> None:
    panels = [panel for panel in iter_panels(dashboard) if panel["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, title
        targets = panel.get("targets", [])
        assert any((t.get("expr") or "").strip() for t in targets), f"{title!r} has no query"
        for target in targets:
            assert target.get("datasource", panel["datasource"])["uid"] == DATASOURCE_UID, title
            assert (target.get("expr") or "").strip(), f"{title!r} has an empty target"
            assert "$" not in target["expr"], f"{title!r}: Grafana variables cannot be checked against Prometheus"


def test_dashboard_expressions_use_exported_metrics() -> None:
    exprs = dashboard_expressions()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= KNOWN_NAMES, f"{expr!r} uses unknown metrics {sorted(names - KNOWN_NAMES)}"
    used = set().union(*(metric_names(e) for e in exprs))
    # Every exported metric is on the dashboard (histograms through _bucket).
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    defined = {re.sub(r"_(bucket|sum|count)$", "", n) for n in KNOWN_NAMES if not n.endswith("_created")}
    assert defined <= shown, f"metrics on no panel: {sorted(defined - shown)}"


def test_rate_windows_are_short(dashboard: dict) -> None:
    for expr in dashboard_expressions():
        for amount, unit in re.findall(r"\[(\d+)([smh])\]", expr):
            assert int(amount) * {"s": 1, "m": 60, "h": 3600}[unit] <= 300, expr


# -- alert rules -----------------------------------------------------------------------------
def test_alert_rules_and_signals() -> None:
    rules = alert_rules()
    names = [rule.name for rule in rules]
    assert len(names) == len(set(names))
    assert {"InttowerAUCDropped", "InttowerDriftDetected", "InttowerConsumerLagGrowing", "InttowerIndexStale",
            "InttowerDeadLetterRateHigh", "InttowerCheckpointTooOld", "InttowerDaemonDown"} <= set(names)
    signals = dict(alert_signals())
    assert signals["InttowerDaemonDown"] == 'up{job="inttower"}'
    assert signals["InttowerAUCDropped"] == "inttower_auc_drift"
    for rule in rules:
        assert f"{rule.signal} {rule.op} " in rule.expr
        names_used = metric_names(rule.expr)
        assert names_used and names_used <= KNOWN_NAMES, (rule.name, sorted(names_used - KNOWN_NAMES))


@pytest.mark.parametrize(
    ("expr", "signal", "op", "threshold"),
    [
        ("x > 0.01", "x", ">", 0.01),
        ("a_b < -0.05", "a_b", "<", -0.05),
        ('up{job="inttower"} == 0', 'up{job="inttower"}', "==", 0.0),
        ("time() - (x > 0) > 60", "time() - (x > 0)", ">", 60.0),
        ("(sum(rate(a[5m])) or vector(0)) / sum(b) >= 1e-2", "(sum(rate(a[5m])) or vector(0)) / sum(b)", ">=", 0.01),
    ],
)
def test_split_comparison(expr: str, signal: str, op: str, threshold: float) -> None:
    assert split_comparison(expr) == (signal, op, threshold)


@pytest.mark.parametrize("expr", ["x", "x > y", "a > 1 and b > 2", "a > 1 or b", "a > 1 > 2", "a > bool 1"])
def test_split_comparison_rejects_other_shapes(expr: str) -> None:
    with pytest.raises(ValueError):
        split_comparison(expr)


def test_metric_names() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model="x"}[5m])))') == {"a_bucket"}
    assert metric_names("(sum(rate(a_total[5m])) or vector(0)) / on() group_left sum(b) offset 1m") == {"a_total", "b"}
    assert metric_names('time() - (c > 0) and on(instance) up{job="inttower"}') == {"c", "up"}


# -- the compose stack's wiring ----------------------------------------------------------------
def test_provisioning_matches_the_dashboard_and_compose() -> None:
    datasource = (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert re.search(rf"^\s+uid:\s*{DATASOURCE_UID}\s*$", datasource, re.MULTILINE)
    assert re.search(r"^\s+url:\s*http://prometheus:9090\s*$", datasource, re.MULTILINE)
    provider = (GRAFANA_DIR / "provisioning" / "dashboards" / "inttower.yaml").read_text()
    assert re.search(r"^\s+path:\s*/var/lib/grafana/dashboards\s*$", provider, re.MULTILINE)
    compose = (DOCKER_DIR / "docker-compose.yml").read_text()
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in compose
    assert "./prometheus:/etc/prometheus:ro" in compose


def test_trainer_config_is_what_prometheus_scrapes() -> None:
    config = load_config(DOCKER_DIR / "trainer.toml")
    assert config.monitoring.enabled and config.monitoring.host == "0.0.0.0"
    assert config.stream.bootstrap_servers == ("kafka:9092",)
    assert config.index.enabled and config.index.index_dir and config.daemon.checkpoint_dir.startswith("/data/")
    scrape = (DOCKER_DIR / "prometheus" / "prometheus.yml").read_text()
    assert re.search(r"job_name:\s*inttower\b", scrape)
    assert f'"trainer:{config.monitoring.port}"' in scrape
    compose = (DOCKER_DIR / "docker-compose.yml").read_text()
    assert "./trainer.toml:/etc/inttower/trainer.toml:ro" in compose
    assert f'"{config.monitoring.port}:{config.monitoring.port}"' in compose
