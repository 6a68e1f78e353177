"""The Grafana dashboards (deploy/helm/tickpipe/files/dashboards/): well-formed, bound to the
agreed data sources, and asking only for metrics the services export. That every query
runs and returns data is checked against a real Prometheus and PostgreSQL in
tests/integration/test_observability.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.observability_helpers import (
    PROMETHEUS_TYPE,
    README,
    SQL_TYPES,
    all_queries,
    dashboard_files,
    datasource_variable,
    exported_metrics,
    load_dashboard,
    panels,
    promql_metric_names,
    sample_names,
    substitute_promql,
    substitute_sql,
)

DATASOURCE_UIDS = {PROMETHEUS_TYPE: "prometheus", SQL_TYPES[0]: "timescaledb"}


def _dashboards() -> list[dict[str, Any]]:
    files = dashboard_files()
    assert {p.name for p in files} >= {"tickpipe-pipeline.json", "tickpipe-market.json"}
    return [load_dashboard(p) for p in files]


def test_dashboards_are_well_formed() -> None:
    uids = set()
    for dashboard in _dashboards():
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        assert dashboard["title"].startswith("tickpipe / ")
        assert "id" not in dashboard or dashboard["id"] is None, (
            "provisioned dashboards carry no id"
        )
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: panel ids repeat"
        for panel in panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["title"].strip()
            assert panel.get("description", "").strip(), f"{panel['title']}: say what it answers"
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_panels_use_the_datasource_variable_which_defaults_to_the_agreed_uid() -> None:
    for dashboard in _dashboards():
        variable = datasource_variable(dashboard)
        assert variable["name"] == "datasource"
        assert variable["current"]["value"] == DATASOURCE_UIDS[variable["query"]]
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            for holder in (panel, *panel["targets"]):
                datasource = holder.get("datasource")
                assert datasource == {"type": variable["query"], "uid": "${datasource}"}, (
                    f"{dashboard['uid']} / {panel['title']}: {datasource}"
                )


def test_every_prometheus_query_names_only_exported_metrics() -> None:
    known = sample_names(exported_metrics()) | {"up"}
    promql = [q for q in all_queries() if q.datasource_type == PROMETHEUS_TYPE]
    assert promql
    for query in promql:
        names = promql_metric_names(query.text)
        assert names, f"{query.panel}: no metric in {query.text}"
        assert names - known == set(), f"{query.panel}: nobody exports {names - known}"
        substitute_promql(query.text)  # no Grafana variable the tests cannot fill in


def test_the_dashboards_cover_every_requested_view() -> None:
    promql = " ".join(q.text for q in all_queries() if q.datasource_type == PROMETHEUS_TYPE)
    for needle in (
        "tickpipe_sim_messages_sent_total",
        "tickpipe_producer_ticks_received_total",
        "tickpipe_producer_ticks_published_total",
        "tickpipe_consumer_messages_consumed_total",
        "tickpipe_consumer_rows_inserted_total",
        "histogram_quantile(0.99, sum by (le) (rate(tickpipe_consumer_end_to_end_latency",
        "histogram_quantile(0.5, sum by (le) (rate(tickpipe_consumer_end_to_end_latency",
        "tickpipe_producer_delivery_latency_seconds_bucket",
        "tickpipe_consumer_lag_messages",
        "sum by (reason) (rate(tickpipe_consumer_dlq_messages_total",
        "tickpipe_producer_ws_reconnects_total",
        "tickpipe_service_ready",
        "up{",
    ):
        assert needle in promql, needle
    sql = " ".join(q.text for q in all_queries() if q.datasource_type in SQL_TYPES)
    for needle in ("market_bars_1m", "close", "volume", "market_ticks", "DISTINCT ON (symbol)"):
        assert needle in sql, needle


@pytest.mark.parametrize("query", [q for q in all_queries() if q.datasource_type in SQL_TYPES])
def test_sql_uses_only_macros_the_tests_substitute(query: Any) -> None:
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    sql = substitute_sql(query.text, start, end, 1000, {"symbol": ["AAPL", "BTC/USD"]})
    assert "BETWEEN '2026-01-01T00:00:00+00:00' AND '2026-01-02T00:00:00+00:00'" in sql or (
        "$__timeFilter" not in query.text
    )


def test_readme_describes_every_panel() -> None:
    readme = README.read_text()
    for dashboard in _dashboards():
        for panel in panels(dashboard):
            if panel["type"] != "row":
                assert f"**{panel['title']}**" in readme, (
                    f"README does not explain {panel['title']}"
                )
