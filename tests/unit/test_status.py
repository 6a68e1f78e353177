"""``tickpipe status``: parsing /metrics, rates from two scrapes, quantiles, and the screen."""

from __future__ import annotations

import argparse
import math
import re
from datetime import UTC, datetime, timedelta

import pytest

from tickpipe_localstack.ports import read_ports_file
from tickpipe_status import cli as status
from tickpipe_status.cli import (
    DatabaseView,
    Scrape,
    bucket_delta,
    build_report,
    describe_dsn,
    healthy,
    histogram_quantile,
    parse_metrics,
    render,
    scrape,
    total,
)
from tickpipe_status.settings import StatusSettings

PRODUCER_T0 = """\
# HELP tickpipe_producer_ticks_received_total Ticks received.
# TYPE tickpipe_producer_ticks_received_total counter
tickpipe_producer_ticks_received_total{asset_class="stock",kind="trade"} 100.0
tickpipe_producer_ticks_received_total{asset_class="stock",kind="quote"} 50.0
# TYPE tickpipe_producer_ticks_published_total counter
tickpipe_producer_ticks_published_total{asset_class="stock",kind="trade"} 90.0
# TYPE tickpipe_producer_delivery_latency_seconds histogram
tickpipe_producer_delivery_latency_seconds_bucket{le="0.01"} 10.0
tickpipe_producer_delivery_latency_seconds_bucket{le="0.1"} 90.0
tickpipe_producer_delivery_latency_seconds_bucket{le="+Inf"} 90.0
tickpipe_producer_delivery_latency_seconds_count 90.0
tickpipe_producer_delivery_latency_seconds_sum 3.0
"""

PRODUCER_T1 = PRODUCER_T0.replace("} 100.0", "} 120.0").replace(
    'kind="trade"} 90.0', 'kind="trade"} 110.0'
)

CONSUMER = """\
# TYPE tickpipe_consumer_rows_inserted_total counter
tickpipe_consumer_rows_inserted_total{kind="trade"} 80.0
# TYPE tickpipe_consumer_lag_messages gauge
tickpipe_consumer_lag_messages{partition="0"} 3.0
tickpipe_consumer_lag_messages{partition="10"} 0.0
tickpipe_consumer_lag_messages{partition="2"} 4.0
# TYPE tickpipe_consumer_dlq_messages_total counter
tickpipe_consumer_dlq_messages_total{reason="not_json"} 2.0
tickpipe_consumer_dlq_messages_total{reason="empty"} 0.0
"""


def _scrape(name: str, text: str, at: float, ready: bool | None = True) -> Scrape:
    return Scrape(name, f"http://{name}:8000", at, parse_metrics(text), True, ready)


def test_parse_metrics_keeps_every_series() -> None:
    samples = parse_metrics(PRODUCER_T0)
    assert total(samples, "tickpipe_producer_ticks_received_total") == 150
    assert total(samples, "tickpipe_producer_delivery_latency_seconds_count") == 90
    assert total(samples, "tickpipe_nothing_total") is None
    key = (
        "tickpipe_producer_ticks_received_total",
        (("asset_class", "stock"), ("kind", "quote")),
    )
    assert samples[key] == 50


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 50.0, 2.0: 100.0, math.inf: 100.0}, 1.0),
        (0.75, {1.0: 50.0, 2.0: 100.0, math.inf: 100.0}, 1.5),
        (0.25, {1.0: 50.0, 2.0: 100.0, math.inf: 100.0}, 0.5),
        (0.99, {1.0: 50.0, 2.0: 50.0, math.inf: 100.0}, 2.0),  # in +Inf: the last finite bound
        (0.5, {1.0: 0.0, math.inf: 0.0}, None),
        (0.5, {}, None),
    ],
)
def test_histogram_quantile_like_prometheus(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    assert histogram_quantile(q, buckets) == expected


def test_bucket_delta_is_empty_after_a_restart() -> None:
    assert bucket_delta({1.0: 5.0, math.inf: 5.0}, {1.0: 7.0, math.inf: 9.0}) == {
        1.0: 2.0,
        math.inf: 4.0,
    }
    assert bucket_delta({1.0: 5.0, math.inf: 5.0}, {1.0: 1.0, math.inf: 1.0}) == {}


def test_rates_come_from_the_difference_of_two_scrapes() -> None:
    before = [_scrape("producer-stocks", PRODUCER_T0, 10.0), _scrape("consumer", CONSUMER, 10.0)]
    after = [_scrape("producer-stocks", PRODUCER_T1, 12.0), _scrape("consumer", CONSUMER, 12.0)]
    report = build_report(before, after, None)
    assert report.window_seconds == pytest.approx(2.0)
    stages = {row.title: row for row in report.stages}
    assert stages["producers received"].per_second == pytest.approx(10.0)  # 20 in 2 s
    assert stages["producers received"].total == 170
    assert stages["producers published"].per_second == pytest.approx(10.0)
    assert stages["rows inserted"].per_second == pytest.approx(0.0)
    assert stages["simulator sent"].per_second is None  # nobody exports it here
    assert report.lag_total == 7
    assert report.dlq_by_reason == {"not_json": 2, "empty": 0}
    assert report.delivery_p99 is None  # no delivery between the scrapes
    assert healthy(report)


def test_a_service_that_restarted_or_is_down_gives_no_rate() -> None:
    before = [_scrape("producer-stocks", PRODUCER_T1, 10.0)]
    after = [_scrape("producer-stocks", PRODUCER_T0, 11.0)]  # counters went back
    rows = {r.title: r for r in build_report(before, after, None).stages}
    assert rows["producers received"].per_second is None
    down = Scrape("consumer", "http://consumer:8000", 11.0, error="connection refused")
    report = build_report([down], [down], None)
    assert not healthy(report)
    assert "consumer         DOWN" in render(report)


def test_render_fits_one_screen_and_shows_everything() -> None:
    now = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    before = [_scrape("producer-stocks", PRODUCER_T0, 10.0), _scrape("consumer", CONSUMER, 10.0)]
    after = [
        _scrape("producer-stocks", PRODUCER_T1, 11.0, ready=False),
        _scrape("consumer", CONSUMER, 11.0),
    ]
    ticks = [(f"SYM{i:02d}", now - timedelta(seconds=i)) for i in range(25)]
    report = build_report(before, after, DatabaseView("db:5432/marketdata", ticks), now=now)
    text = render(report)
    lines = text.splitlines()
    assert len(lines) <= 60
    assert max(map(len, lines)) <= 110
    assert "tickpipe status  2026-11-25 14:30:00 UTC" in lines[0]
    assert "producer-stocks  up, NOT READY" in text
    assert "consumer         up, ready" in text
    assert re.search(r"\nproducers received +20\.0 +170\n", text)
    assert re.search(r"\nrows inserted +0\.0 +80\n", text)
    assert re.search(r"\nsimulator sent +- +-\n", text)
    assert "7 messages  (p0 3, p2 4, p10 0)" in text
    assert "not_json 2  (2 in total)" in text
    assert "SYM00         2026-11-25 14:30:00.000" in text
    assert "SYM19" in text
    assert "SYM20" not in text
    assert "and 5 more symbols" in text
    assert not healthy(report)


def test_database_errors_and_passwords() -> None:
    assert describe_dsn("postgresql://tick:s3cret@db.example:6543/marketdata") == (
        "db.example:6543/marketdata"
    )
    assert "s3cret" not in describe_dsn("host=h port=1 dbname=d password=s3cret")
    report = build_report([], [], DatabaseView("h:1/d", error="connection refused"))
    assert "database error: connection refused" in render(report)
    assert not healthy(report)


def test_scrape_reads_metrics_and_readiness() -> None:
    answers = {
        "http://p:8000/metrics": (200, PRODUCER_T0),
        "http://p:8000/readyz": (503, '{"ready": false}'),
    }

    def fetch(url: str, timeout: float) -> tuple[int, str]:
        if url not in answers:
            raise OSError("connection refused")
        return answers[url]

    result = scrape("producer-stocks", "http://p:8000/", fetch=fetch)
    assert (result.up, result.ready, result.error) == (True, False, None)
    assert total(result.samples, "tickpipe_producer_ticks_received_total") == 150
    missing = scrape("consumer", "http://c:8000", fetch=fetch)
    assert (missing.up, missing.error) == (False, "connection refused")


def _clear_port_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in read_ports_file():
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


def test_command_line_defaults_are_the_local_stack(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_port_variables(monkeypatch)
    defaults = read_ports_file()
    seen: dict[str, object] = {}

    def fake_run(args: argparse.Namespace, settings: StatusSettings) -> int:
        seen.update(vars(args))
        seen["dsn"] = settings.dsn()
        return 0

    monkeypatch.setattr(status, "run_status", fake_run)
    assert status.main(["status"]) == 0
    assert seen["market_sim"] == f"http://127.0.0.1:{defaults['TICKPIPE_SIM_PORT']}"
    assert seen["consumer"] == f"http://127.0.0.1:{defaults['TICKPIPE_CONSUMER_PORT']}"
    assert seen["database_url"] is None
    assert (
        seen["dsn"] == f"postgresql://postgres@127.0.0.1:{defaults['TICKPIPE_PG_PORT']}/marketdata"
    )
    assert status.main(["status", "--consumer", "http://x:1", "--watch", "--check"]) == 0
    assert (seen["consumer"], seen["watch"], seen["check"]) == ("http://x:1", True, True)
    with pytest.raises(SystemExit):
        status.main(["nonsense"])
    capsys.readouterr()


def test_the_ports_come_from_the_environment_over_the_ports_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_port_variables(monkeypatch)
    monkeypatch.setenv("TICKPIPE_PG_PORT", "25432")
    monkeypatch.setenv("TICKPIPE_PRODUCER_CRYPTO_PORT", "28002")
    settings = StatusSettings()
    assert settings.local_database_url() == "postgresql://postgres@127.0.0.1:25432/marketdata"
    assert settings.targets()["producer-crypto"] == "http://127.0.0.1:28002"
    assert settings.targets()["producer-stocks"].endswith(
        f":{read_ports_file()['TICKPIPE_PRODUCER_STOCKS_PORT']}"
    )
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@h:1/d")
    assert StatusSettings().dsn() == "postgresql://u:pw@h:1/d"
    monkeypatch.setenv("TICKPIPE_PG_PORT", "not-a-port")
    with pytest.raises(SystemExit) as exited:
        status.main(["status"])
    assert exited.value.code == 2


def test_run_status_prints_one_report_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    down = Scrape("consumer", "http://c", 1.0, error="refused")
    monkeypatch.setattr(status, "scrape_all", lambda targets, timeout: [down])
    queried: list[str] = []

    def fake_query(dsn: str, timeout: float) -> DatabaseView:
        queried.append(dsn)
        return DatabaseView("h:1/d")

    monkeypatch.setattr(status, "query_last_ticks", fake_query)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@h:1/d")
    printed: list[str] = []
    settings = StatusSettings()
    args = status._parser(settings).parse_args(["status", "--check"])
    assert status.run_status(args, settings, printed.append, lambda _: None) == 1
    assert queried == ["postgresql://u:pw@h:1/d"]
    assert "consumer" in printed[0]
    args = status._parser(settings).parse_args(["status", "--no-database"])
    assert status.run_status(args, settings, printed.append, lambda _: None) == 0
    assert len(queried) == 1


BACKFILLING = """\
# TYPE tickpipe_producer_gaps_total counter
tickpipe_producer_gaps_total{reason="reconnect"} 3.0
tickpipe_producer_gaps_total{reason="restart"} 1.0
# TYPE tickpipe_producer_gap_seconds histogram
tickpipe_producer_gap_seconds_bucket{le="+Inf"} 4.0
tickpipe_producer_gap_seconds_count 4.0
tickpipe_producer_gap_seconds_sum 12.5
# TYPE tickpipe_producer_ticks_backfilled_total counter
tickpipe_producer_ticks_backfilled_total{asset_class="stock",kind="trade"} 900.0
tickpipe_producer_ticks_backfilled_total{asset_class="stock",kind="bar"} 2.0
# TYPE tickpipe_producer_backfill_errors_total counter
tickpipe_producer_backfill_errors_total{reason="rate_limited"} 1.0
# TYPE tickpipe_producer_backfill_pending gauge
tickpipe_producer_backfill_pending 1.0
"""


def test_render_shows_the_gaps_and_their_backfill() -> None:
    now = datetime(2026, 11, 25, 14, 30, tzinfo=UTC)
    before = [_scrape("producer-stocks", PRODUCER_T0 + BACKFILLING, 10.0)]
    after = [_scrape("producer-stocks", PRODUCER_T1 + BACKFILLING, 11.0)]
    text = render(build_report(before, after, None, now=now))
    assert "(1 passes pending)" in text
    assert re.search(r"\ngaps seen +0\.0 +4\n", text)
    assert re.search(r"\ngap seconds +0\.0 +12\n", text)  # 12.5 s, rounded for the table
    assert re.search(r"\nticks backfilled +0\.0 +902\n", text)
    assert re.search(r"\nbackfill errors +0\.0 +1\n", text)
    # A pipeline whose producers export no backfill series shows no such block.
    plain = render(build_report([_scrape("consumer", CONSUMER, 10.0)], [], None, now=now))
    assert "BACKFILL" not in plain
