"""Observability you can trust, checked against the real thing: the simulator, both producers
and the consumer run as processes (as in the e2e test), a real Prometheus scrapes them every
second with the alert rules loaded, and then

- every dashboard query (PromQL, Grafana's variables filled in) and every alert expression
  goes through Prometheus' HTTP API: each must parse, name only metrics the services export,
  and the panels must return data — throughput above zero, latency quantiles finite;
- no alert fires on the healthy pipeline, while a poison message makes the DLQ alert fire
  and a stopped service the target-down alert;
- every SQL panel runs against the PostgreSQL the consumer wrote, and returns rows;
- ``tickpipe status`` summarises the running pipeline;
- every log line is one JSON object, and no configured secret appears in a log, a metrics
  page or the status output.

The pipeline and Prometheus start once for the module; the tests run in file order.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

from tests.observability_helpers import (
    ALERT_RULES,
    PROMETHEUS_TYPE,
    SQL_TYPES,
    Query,
    alert_rules,
    all_queries,
    prometheus_config,
    promql_metric_names,
    require_tool,
    substitute_promql,
    substitute_sql,
)
from tests.processes import Service, free_port, http_get, wait_for

SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval: several scrapes
STOCKS = ("AAPL", "MSFT")
CRYPTO = ("BTC/USD", "ETH/USD")
SECRETS = {
    "ALPACA_SECRET_KEY": "alpaca-" + uuid.uuid4().hex,
    "KAFKA_SASL_PASSWORD": "sasl-" + uuid.uuid4().hex,
    "DATABASE_URL password": "db-" + uuid.uuid4().hex,
}
COMPONENTS = ("market-sim", "producer-stocks", "producer-crypto", "consumer")

# (panel title, legend) of the series that must be above zero on a pipeline in motion.
# Kinds that come now and then, not every step (trade corrections and cancels come with the
# stock trades): a rate over a short window may well be 0 for them.
SPORADIC_KINDS = frozenset({"trade_correction", "trade_cancel", "trading_status", "luld"})
MUST_BE_POSITIVE = {
    ("Throughput by stage", "simulator sent"),
    ("Throughput by stage", "producers received"),
    ("Throughput by stage", "producers published"),
    ("Throughput by stage", "consumer consumed"),
    ("Throughput by stage", "rows inserted"),
    ("Published by asset class and kind", "{{asset_class}} {{kind}}"),
    ("End-to-end latency (exchange → database commit)", "p50"),
    ("End-to-end latency (exchange → database commit)", "p99"),
    ("Kafka delivery latency (producers)", "{{job}} p50"),
    ("Kafka delivery latency (producers)", "{{job}} p99"),
    ("Batch commit latency (consumer)", "p50"),
    ("Batch commit latency (consumer)", "p99"),
    ("CSV backup writes", "rows/s {{job}}"),
    ("CSV backup writes", "bytes/s {{job}}"),
    ("Consumer batch size", "messages per batch"),
    ("Ticks per symbol (METRICS_PER_SYMBOL)", "{{symbol}}"),
}


@dataclass
class Stack:
    services: dict[str, Service]
    ports: dict[str, int]
    prometheus: str  # base URL
    dsn: str
    kafka: str
    topic: str
    secrets: list[str]


# ---------------------------------------------------------------------------- helpers


def _api(stack_or_url: Stack | str, path: str, **params: str) -> Any:
    base = stack_or_url if isinstance(stack_or_url, str) else stack_or_url.prometheus
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    status, body = http_get(url, timeout=10)
    answer = json.loads(body)
    assert status == 200, f"{path} {params}: {status} {body[:600]!r}"
    assert answer.get("status") == "success", f"{path} {params}: {body[:600]!r}"
    return answer["data"]


def _query(stack: Stack | str, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query; the result as (labels, value) pairs (a scalar as one pair)."""
    data: dict[str, Any] = _api(stack, "/api/v1/query", query=expr)
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    assert data["resultType"] == "vector", data
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def _with_password(dsn: str, password: str) -> str | None:
    """The DSN with this password, if the server accepts it (trust or the same password)."""
    candidate = psycopg.conninfo.make_conninfo(dsn, password=password)
    try:
        with psycopg.connect(candidate, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return None
    return candidate


# ---------------------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prometheus_bin = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("observability")

    topic = f"test_obs_{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    new = [NewTopic(topic, num_partitions=3), NewTopic(f"{topic}.dlq", num_partitions=1)]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result(timeout=60)
    database = f"tickpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    plain_dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=database)
    existing = psycopg.conninfo.conninfo_to_dict(plain_dsn).get("password")
    secrets = dict(SECRETS)
    if existing:
        secrets["DATABASE_URL password"] = str(existing)  # the one the server wants
        dsn = plain_dsn
    else:
        dsn = _with_password(plain_dsn, secrets["DATABASE_URL password"]) or plain_dsn
        if dsn == plain_dsn:
            del secrets["DATABASE_URL password"]  # the server wants no password we can set

    ports = {name: free_port() for name in COMPONENTS}
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": topic}
    common = {"HTTP_HOST": "127.0.0.1", "LOG_LEVEL": "DEBUG"}
    producer_env = {
        **common,
        **kafka,
        "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{ports['market-sim']}",
        # Live-looking keys (the simulator accepts any): they must never reach a log.
        "ALPACA_API_KEY": "PKOBSERVABILITYTEST",
        "ALPACA_SECRET_KEY": secrets["ALPACA_SECRET_KEY"],
        "KAFKA_SASL_PASSWORD": secrets["KAFKA_SASL_PASSWORD"],
        "BACKUP_DIR": str(tmp / "backup"),
    }
    services = {
        "market-sim": Service(
            "market-sim",
            "tickpipe_market_sim",
            {
                **common,
                "SIM_HOST": "127.0.0.1",
                "SIM_PORT": str(ports["market-sim"]),
                "SIM_RATE_PER_SYMBOL": "20",
                "SIM_BAR_INTERVAL": "1",
            },
            tmp / "market-sim.log",
        ),
        "consumer": Service(
            "consumer",
            "tickpipe_consumer",
            {
                **common,
                **kafka,
                "DATABASE_URL": dsn,
                "KAFKA_SASL_PASSWORD": secrets["KAFKA_SASL_PASSWORD"],
                "KAFKA_GROUP_ID": f"obs-{uuid.uuid4().hex[:8]}",
                "HTTP_PORT": str(ports["consumer"]),
                "BATCH_MAX_SECONDS": "0.2",
            },
            tmp / "consumer.log",
        ),
        "producer-stocks": Service(
            "producer-stocks",
            "tickpipe_producer_stocks",
            {
                **producer_env,
                "SYMBOLS": ",".join(STOCKS),
                "HTTP_PORT": str(ports["producer-stocks"]),
                # per-symbol series, capped at one symbol: MSFT is counted as "other"
                "METRICS_PER_SYMBOL": "true",
                "METRICS_SYMBOL_LIMIT": "1",
            },
            tmp / "producer-stocks.log",
        ),
        "producer-crypto": Service(
            "producer-crypto",
            "tickpipe_producer_crypto",
            {
                **producer_env,
                "SYMBOLS": ",".join(CRYPTO),
                "HTTP_PORT": str(ports["producer-crypto"]),
            },
            tmp / "producer-crypto.log",
        ),
    }

    prometheus_port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(prometheus_config(SCRAPE_INTERVAL, ALERT_RULES, prometheus_port, ports))
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        services["market-sim"].start().wait_http(f"http://127.0.0.1:{ports['market-sim']}/readyz")
        services["consumer"].start().wait_http(f"http://127.0.0.1:{ports['consumer']}/readyz")
        for name in ("producer-stocks", "producer-crypto"):
            services[name].start()
        for name in ("producer-stocks", "producer-crypto"):
            services[name].wait_http(f"http://127.0.0.1:{ports[name]}/readyz")

        with (tmp / "prometheus.log").open("wb") as log:
            prometheus = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
            )
        url = f"http://127.0.0.1:{prometheus_port}"

        def ready() -> bool:
            assert prometheus is not None
            assert prometheus.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                return http_get(f"{url}/-/ready", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(ready, 30, "Prometheus to start")
        result = Stack(services, ports, url, dsn, kafka_bootstrap, topic, list(secrets.values()))

        def scraped_enough() -> bool:
            # every target up, a few seconds of samples, rows flowing, the lag gauge there
            checks = (
                "count(up == 1) == 5",
                'count_over_time(up{job="consumer"}[1m]) >= 8',
                "sum(rate(tickpipe_consumer_rows_inserted_total[5s])) > 0",
                "count(tickpipe_consumer_lag_messages) > 0",
            )
            return all(_query(result, check) for check in checks)

        wait_for(scraped_enough, 60, "Prometheus to scrape the running pipeline")
        yield result
    finally:
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
        for service in services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()
        admin.delete_topics([topic, f"{topic}.dlq"], operation_timeout=30)
        with psycopg.connect(pg_admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


# ---------------------------------------------------------------------------- the tests


def test_prometheus_scrapes_every_service_and_loads_every_rule(stack: Stack) -> None:
    targets = _api(stack, "/api/v1/targets")["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert health == dict.fromkeys(("prometheus", *COMPONENTS), "up"), targets
    loaded = {
        rule["name"]
        for group in _api(stack, "/api/v1/rules")["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    assert loaded == {rule["alert"] for rule in alert_rules()}
    # every service says which component it is; the per-symbol cap holds
    info = {labels["component"] for labels, _ in _query(stack, "tickpipe_service_info")}
    assert info == set(COMPONENTS)
    symbols = {
        labels["symbol"] for labels, _ in _query(stack, "tickpipe_producer_symbol_ticks_total")
    }
    assert symbols == {"AAPL", "other"}


def _exported_names(stack: Stack) -> set[str]:
    names = set(_api(stack, "/api/v1/label/__name__/values"))
    assert "tickpipe_consumer_rows_inserted_total" in names
    return names


def _prometheus_queries() -> list[Query]:
    queries = [q for q in all_queries() if q.datasource_type == PROMETHEUS_TYPE]
    assert queries
    return queries


def test_every_dashboard_query_runs_names_exported_metrics_and_returns_data(stack: Stack) -> None:
    exported = _exported_names(stack)
    named = {(q.panel, q.legend) for q in _prometheus_queries()}
    assert named >= MUST_BE_POSITIVE, f"not in the dashboards: {MUST_BE_POSITIVE - named}"
    problems: list[str] = []
    for query in _prometheus_queries():
        expr = substitute_promql(query.text, rate_interval=RATE_INTERVAL, interval="1s")
        where = f"{query.dashboard} / {query.panel} / {query.ref}: {expr}"
        unknown = promql_metric_names(expr) - exported
        if unknown:
            problems.append(f"{where}: no service exports {sorted(unknown)}")
            continue
        try:
            result = _query(stack, expr)
        except AssertionError as exc:  # Prometheus refused it (a parse error)
            problems.append(f"{where}: {exc}")
            continue
        values = [v for _, v in result]
        if not values:
            problems.append(f"{where}: no data")
        elif (query.panel, query.legend) in MUST_BE_POSITIVE and not all(
            math.isfinite(v) and v > 0
            for labels, v in result
            if labels.get("kind") not in SPORADIC_KINDS
        ):
            problems.append(f"{where}: expected values above zero, got {values}")
    assert problems == []


def test_the_health_panels_show_every_service_up_and_ready(stack: Stack) -> None:
    up = {labels["job"]: v for labels, v in _query(stack, 'up{job!="prometheus"}')}
    assert up == dict.fromkeys(COMPONENTS, 1.0)
    ready = {labels["component"]: v for labels, v in _query(stack, "tickpipe_service_ready")}
    assert ready == dict.fromkeys(("producer-stocks", "producer-crypto", "consumer"), 1.0)


def test_every_alert_expression_runs_and_none_fires_on_a_healthy_pipeline(stack: Stack) -> None:
    exported = _exported_names(stack)
    for rule in alert_rules():
        assert promql_metric_names(rule["expr"]) <= exported, rule["alert"]
        firing = _query(stack, rule["expr"])
        assert firing == [], f"{rule['alert']} fires on a healthy pipeline: {firing}"
    alerts = _api(stack, "/api/v1/alerts")["alerts"]
    assert [a for a in alerts if a["state"] == "firing"] == []


def _alert_expr(name: str) -> str:
    return str(next(rule["expr"] for rule in alert_rules() if rule["alert"] == name))


def test_a_poison_message_makes_the_dlq_alert_and_panel_fire(stack: Stack) -> None:
    producer = Producer({"bootstrap.servers": stack.kafka})
    for _ in range(2):
        producer.produce(stack.topic, key=b"AAPL", value=b"this is not json")
    assert producer.flush(30) == 0
    expr = _alert_expr("TickpipeDlqMessages")
    panel = next(q for q in _prometheus_queries() if q.panel == "DLQ messages by reason")
    panel_expr = substitute_promql(panel.text, rate_interval=RATE_INTERVAL)

    def both_show_it() -> bool:
        rates = {labels["reason"]: v for labels, v in _query(stack, panel_expr)}
        return bool(_query(stack, expr)) and rates.get("not_json", 0) > 0

    wait_for(both_show_it, 30, "the DLQ alert expression and panel to show the poison messages")
    assert {labels["reason"] for labels, _ in _query(stack, expr)} == {"not_json"}


def _symbols(dsn: str, variable_sql: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [str(row[0]) for row in conn.execute(variable_sql)]


def test_every_sql_panel_runs_against_the_database_and_returns_rows(stack: Stack) -> None:
    queries = [q for q in all_queries() if q.datasource_type in SQL_TYPES]
    variables = [q for q in queries if q.panel.startswith("variable ")]
    assert [q.panel for q in variables] == ["variable symbol"]
    symbols = _symbols(stack.dsn, substitute_sql(variables[0].text, *_range(), 1000, {}))
    assert set(symbols) == set(STOCKS + CRYPTO)
    for query in queries:
        text = substitute_sql(query.text, *_range(), 1000, {"symbol": symbols})
        # Grafana's database user only reads: run every panel read-only
        with psycopg.connect(stack.dsn) as conn:
            conn.read_only = True
            rows = conn.execute(text).fetchall()
        assert rows, f"{query.dashboard} / {query.panel}: no rows\n{text}"


def _range() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(minutes=30), now + timedelta(minutes=1)


def test_tickpipe_status_summarises_the_running_pipeline(stack: Stack) -> None:
    args = [f"--{name}=http://127.0.0.1:{port}" for name, port in stack.ports.items()]
    options = ["--database-url", stack.dsn, "--window", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "tickpipe_status.cli", "status", *args, "--check", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for name in COMPONENTS:
        assert f"{name:<17}up, ready" in out, out
    rates = {}
    for line in out.splitlines():
        for title in ("simulator sent", "producers published", "rows inserted"):
            if line.startswith(title):
                rates[title] = float(line[len(title) :].split()[0].replace(",", ""))
    assert rates.keys() == {"simulator sent", "producers published", "rows inserted"}, out
    assert all(v > 0 for v in rates.values()), out
    assert re.search(r"\nconsumer lag +[0-9,]+ messages  \(p0 ", out), out
    dead = _query(stack, 'sum(tickpipe_consumer_dlq_messages_total{reason="not_json"})')
    count = int(dead[0][1]) if dead else 0
    assert (f"not_json {count}" if count else "DLQ by reason         none") in out, out
    for symbol in STOCKS + CRYPTO:
        assert f"\n{symbol:<14}20" in out, out
    for secret in stack.secrets:
        assert secret not in out + result.stderr


def test_no_secret_on_any_metrics_or_readiness_page(stack: Stack) -> None:
    for name, port in stack.ports.items():
        for path in ("/metrics", "/readyz", "/healthz"):
            _, body = http_get(f"http://127.0.0.1:{port}{path}")
            for secret in stack.secrets:
                assert secret.encode() not in body, f"{name}{path} shows a secret"


def test_a_stopped_service_makes_the_target_down_alert_fire(stack: Stack) -> None:
    service = stack.services["producer-crypto"]
    assert service.stop() == 0, service.log_tail()
    expr = _alert_expr("TickpipeTargetDown")
    wait_for(lambda: bool(_query(stack, expr)), 20, "the target-down expression to fire")
    assert {labels["job"] for labels, _ in _query(stack, expr)} == {"producer-crypto"}


def test_logs_are_json_lines_without_secrets(stack: Stack) -> None:
    for name in ("producer-stocks", "market-sim", "consumer"):
        service = stack.services[name]
        if service.process is not None and service.process.poll() is None:
            assert service.stop() == 0, service.log_tail()
    assert len(stack.secrets) >= 2
    for service in stack.services.values():
        text = service.log_path.read_text()
        lines = text.splitlines()
        assert len(lines) > 5, f"{service.name} logged almost nothing"
        for secret in stack.secrets:
            assert secret not in text, f"{service.name} logged a secret"
        for line in lines:
            record = json.loads(line)
            assert isinstance(record, dict), line
            assert {"time", "level", "service", "event"} <= record.keys(), line
            assert record["service"], line
