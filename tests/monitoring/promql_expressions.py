"""The PromQL of the compose stack's dashboard and alert rules, for tests to check.

`dashboard_expressions()` lists every panel query of `docker/grafana/dashboards/`;
`alert_signals()` lists each alert rule of `docker/prometheus/alerts.yml` with its
trailing comparison stripped (``x > 0.01`` -> ``x``), so a test can query the signal
alone against a real Prometheus and see that it returns data. `metric_names(expr)` picks
the metric names out of an expression.

The alert file is read without a YAML library (the project does not depend on one): it
relies on the file's documented layout, one ``- alert: NAME`` line followed by a one-line
``expr:``, and fails loudly when that layout is broken. `promtool check rules`
(tests/monitoring/test_promtool.py) is the full YAML and PromQL check.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
DASHBOARD_DIR = DOCKER_DIR / "grafana" / "dashboards"
ALERTS_FILE = DOCKER_DIR / "prometheus" / "alerts.yml"

#: The uid of the provisioned Prometheus datasource every panel must use.
DATASOURCE_UID = "prometheus"


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str  # the whole expression, as in alerts.yml
    signal: str  # expr without the trailing comparison
    op: str  # the trailing comparison operator
    threshold: float


# -- dashboards ----------------------------------------------------------------------------
def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(dashboard: dict):
    """Every panel, rows' nested panels included (a collapsed row keeps its panels inside)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    """Every non-empty target ``expr`` of every panel of every dashboard, in order, unique."""
    seen: dict[str, None] = {}
    for path in dashboard_files():
        for panel in iter_panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                expr = (target.get("expr") or "").strip()
                if expr:
                    seen.setdefault(expr)
    return list(seen)


# -- alert rules ---------------------------------------------------------------------------
_ALERT_LINE = re.compile(r"^\s*-\s+alert:\s*(?P<name>\S+)\s*$")
_EXPR_LINE = re.compile(r"^\s*expr:\s*(?P<expr>.*?)\s*$")
_TRAILING_COMPARISON = re.compile(
    r"^(?P<signal>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)$"
)
#: Operators binding looser than a comparison: one of these at the top level of the
#: signal would make the trailing comparison apply to its right operand only.
_LOOSER_THAN_COMPARISON = re.compile(r"\b(and|or|unless)\b")


def _yaml_scalar(raw: str, where: str) -> str:
    if not raw or raw[0] in "|>":
        raise ValueError(f"{where}: expr must be a one-line scalar, got {raw!r}")
    if raw[0] == "'":
        if not raw.endswith("'") or len(raw) < 2:
            raise ValueError(f"{where}: unterminated quoted expr {raw!r}")
        return raw[1:-1].replace("''", "'")
    if raw[0] == '"':
        return json.loads(raw)
    return raw.split(" #", 1)[0].rstrip()  # a plain scalar may end in a comment


def _top_level(expr: str) -> str:
    """``expr`` with everything inside (), [], {} and string literals blanked out."""
    out, depth, quote = [], 0, ""
    for ch in expr:
        if quote:
            out.append(" ")
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
            out.append(" ")
        elif ch in "([{":
            depth += 1
            out.append(" ")
        elif ch in ")]}":
            depth -= 1
            out.append(" ")
        else:
            out.append(ch if depth == 0 else " ")
    return "".join(out)


def split_comparison(expr: str) -> tuple[str, str, float]:
    """``"<signal> <op> <number>"`` -> (signal, op, number); ValueError for any other shape."""
    m = _TRAILING_COMPARISON.match(expr.strip())
    if m is None:
        raise ValueError(f"not '<signal> <comparison> <number>': {expr!r}")
    signal = m.group("signal").strip()
    top = _top_level(signal)
    if _LOOSER_THAN_COMPARISON.search(top) or re.search(r"==|!=|>=|<=|>|<", top):
        raise ValueError(f"the trailing comparison is not the last top-level operator: {expr!r}")
    if re.search(r"\bbool\s*$", signal):
        raise ValueError(f"a 'bool' comparison is not an alert condition: {expr!r}")
    return signal, m.group("op"), float(m.group("num"))


def alert_rules(path: Path = ALERTS_FILE) -> list[AlertRule]:
    """The alert rules of ``path`` in file order (see the module docstring for the layout)."""
    rules: list[AlertRule] = []
    name: str | None = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        if m := _ALERT_LINE.match(line):
            if name is not None:
                raise ValueError(f"{path}:{lineno}: alert {name} has no expr before the next alert")
            name = m.group("name").strip("'\"")
        elif (m := _EXPR_LINE.match(line)) and name is not None:
            expr = _yaml_scalar(m.group("expr"), f"{path}:{lineno}")
            signal, op, threshold = split_comparison(expr)
            rules.append(AlertRule(name, expr, signal, op, threshold))
            name = None
    if name is not None:
        raise ValueError(f"{path}: alert {name} has no expr")
    if not rules:
        raise ValueError(f"{path}: no alert rules found")
    return rules


def alert_signals() -> list[tuple[str, str]]:
    """(alert name, signal expression) for every alert rule, the comparison stripped."""
    return [(rule.name, rule.signal) for rule in alert_rules()]


# -- metric names in PromQL ----------------------------------------------------------------
_KEYWORDS = frozenset(
    ["and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"]
    + ["sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"]
    + ["inf", "nan", "start", "end"]  # Inf/NaN literals and @ start()/end()
)
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (function names, keywords, label
    names and values, durations and numbers left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(1)
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(word)
    return names


def exported_metric_names() -> set[str]:
    """Every series name a `TrainerMetrics` or `ServingMetrics` registry can expose (``up`` not included)."""
    from monitoring.metrics import ServingMetrics, TrainerMetrics

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}
    names: set[str] = set()
    for family in [*TrainerMetrics().registry.collect(), *ServingMetrics().registry.collect()]:
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
