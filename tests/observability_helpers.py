"""Reading tickpipe's dashboards and alert rules the way Grafana and Prometheus do, for the
observability tests: the queries in them, Grafana's variables substituted, and the metric
names a PromQL expression refers to."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from tests.availability import unavailable
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_market_sim.stats import SimMetrics

REPO = Path(__file__).resolve().parent.parent
CHART_FILES = REPO / "deploy" / "helm" / "tickpipe" / "files"
DASHBOARDS = CHART_FILES / "dashboards"
ALERT_RULES = CHART_FILES / "alerts" / "tickpipe-alerts.yaml"
ALERT_TESTS = REPO / "tests" / "alerts"
PROMETHEUS_TEMPLATE = REPO / "deploy" / "local" / "prometheus" / "prometheus.yml.in"
README = REPO / "README.md"

PROMETHEUS_TYPE = "prometheus"
SQL_TYPES = ("grafana-postgresql-datasource", "postgres")


def require_tool(name: str) -> str:
    """The path of a command-line tool; a missing one fails under CI=true, else skips."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        message = (
            "not installed (Debian: apt-get install -y prometheus; "
            "deploy/local/stack.sh install does it as root)"
        )
        unavailable(name, message)
    return path


# ------------------------------------------------------------------------- dashboards


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str  # panel title, or "variable <name>"
    ref: str
    datasource_type: str
    text: str  # PromQL or SQL, as written in the dashboard
    legend: str = ""


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def datasource_variable(dashboard: Mapping[str, Any]) -> dict[str, Any]:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":
            result: dict[str, Any] = variable
            return result
    raise AssertionError(f"{dashboard['title']}: no datasource variable")


def queries(dashboard: Mapping[str, Any]) -> list[Query]:
    ds_type = datasource_variable(dashboard)["query"]
    found: list[Query] = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            text = variable["query"]
            if isinstance(text, dict):
                text = text.get("query") or text.get("rawSql") or ""
            found.append(
                Query(dashboard["uid"], f"variable {variable['name']}", "-", ds_type, text)
            )
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource") or {}
            text = target.get("expr") if "expr" in target else target.get("rawSql", "")
            found.append(
                Query(
                    dashboard["uid"],
                    panel["title"],
                    target["refId"],
                    datasource.get("type", ds_type),
                    text,
                    target.get("legendFormat", ""),
                )
            )
    return found


def all_queries() -> list[Query]:
    return [q for path in dashboard_files() for q in queries(load_dashboard(path))]


# Grafana's global variables, as a test can set them: a rate window that holds several
# scrapes, and the interval of one data point.
def substitute_promql(expr: str, rate_interval: str = "1m", interval: str = "15s") -> str:
    text = expr
    for name, value in (
        ("__rate_interval", rate_interval),
        ("__interval_ms", str(_duration_ms(interval))),
        ("__interval", interval),
        ("__range", rate_interval),
    ):
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in text:
        raise AssertionError(f"a Grafana variable this test does not know is left in: {text}")
    return text


def _duration_ms(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    factor = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[match.group(2)]
    return int(match.group(1)) * factor


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def substitute_sql(
    sql: str,
    start: datetime,
    end: datetime,
    interval_ms: int,
    variables: Mapping[str, Sequence[str]],
) -> str:
    """What Grafana's PostgreSQL data source sends: ``$__timeFilter(col)`` as a BETWEEN on
    the dashboard's time range, ``$__interval_ms``, and multi-value variables as quoted lists."""
    text = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: (
            f"{m.group(1).strip()} BETWEEN {sql_literal(start.isoformat())}"
            f" AND {sql_literal(end.isoformat())}"
        ),
        sql,
    )
    text = text.replace("$__interval_ms", str(interval_ms))
    for name, values in variables.items():
        quoted = ",".join(sql_literal(v) for v in values) or "NULL"
        text = text.replace("${" + name + "}", quoted).replace("$" + name, quoted)
    if "$" in text:
        raise AssertionError(
            f"a Grafana macro or variable this test does not know is left in: {text}"
        )
    return text


# ------------------------------------------------------------------------------ PromQL

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"and", "or", "unless", "inf", "nan", "atan2"}
)
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"#[^\n]*", "", text)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function (or an aggregation followed by its argument)
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


# --------------------------------------------------------------------------- alert rules


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERT_RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def alert_test_files() -> list[Path]:
    return sorted(ALERT_TESTS.glob("*.yaml"))


# ---------------------------------------------------------------------- metric catalogue


def exported_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric a tickpipe service can export (per-symbol series included): exposition
    name (counters with ``_total``) → (type, label names)."""
    registries = [CollectorRegistry() for _ in range(3)]  # one per service, as in production
    ProducerMetrics(registries[0], component="producer-stocks", per_symbol=True)
    ConsumerMetrics(registries[1])
    SimMetrics(registries[2])
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    # The registered metric objects: labelled metrics without children export no samples,
    # but the objects know their type and label names.
    for registry in registries:
        for collector in list(getattr(registry, "_collector_to_names", {})):
            kind = str(collector._type)
            name = str(collector._name) + ("_total" if kind == "counter" else "")
            found[name] = (kind, tuple(str(label) for label in collector._labelnames))
    return found


def sample_names(metrics: Mapping[str, tuple[str, tuple[str, ...]]]) -> set[str]:
    """The series names Prometheus stores for these metrics (histograms as _bucket etc.)."""
    names: set[str] = set()
    for name, (kind, _) in metrics.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


def prometheus_config(
    scrape_interval: str,
    rules_file: Path,
    prometheus_port: int,
    ports: Mapping[str, int],
) -> str:
    """deploy/local/prometheus/prometheus.yml.in with its placeholders filled in."""
    values = {
        "SCRAPE_INTERVAL": scrape_interval,
        "SCRAPE_TIMEOUT": scrape_interval,
        "RULES_FILE": str(rules_file),
        "PROMETHEUS_PORT": str(prometheus_port),
        "SIM_PORT": str(ports["market-sim"]),
        "PRODUCER_STOCKS_PORT": str(ports["producer-stocks"]),
        "PRODUCER_CRYPTO_PORT": str(ports["producer-crypto"]),
        "CONSUMER_PORT": str(ports["consumer"]),
    }
    text = PROMETHEUS_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"@[A-Z_]+@", text), text
    return text
