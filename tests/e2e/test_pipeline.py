"""The whole pipeline as separate processes: simulator → both producers → Kafka → consumer →
PostgreSQL, for a fixed amount of ticks. Afterwards the table must hold exactly what was
published — none missing, none twice — reconciled against the simulator's ``/stats``. The
stock feed amends its trades often in this run (corrections and cancels come with trades) and
the stock producer subscribes statuses and LULD bands, so every kind of schema version 3 goes
the whole way too, and the corrected view is checked against the stored amendments.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.support import db_counts, metric_sum, sim_run_over, sim_sent, trade_ids
from tests.processes import Service, free_port, http_json, wait_for

EVENTS_PER_SYMBOL = 150
STOCKS = ("AAPL", "MSFT")
CRYPTO = ("BTC/USD", "ETH/USD")
STOCK_PATH, CRYPTO_PATH = "/v2/iex", "/v1beta3/crypto/us"
AMENDING_KINDS = frozenset({"trade_correction", "trade_cancel", "trading_status", "luld"})
SUBSCRIBED_KINDS = frozenset({"trade", "quote", "bar", "orderbook"}) | AMENDING_KINDS
SECRET = "e2e-secret-" + uuid.uuid4().hex


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    sim_port = free_port()
    ports = {"stocks": free_port(), "crypto": free_port(), "consumer": free_port()}
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KAFKA_TOPIC": fresh_topic}
    producer_env = {
        **kafka,
        "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{sim_port}",
        "PUBLISH_MODE": "every_tick",
        "BACKUP_DIR": str(tmp_path / "backup"),
        "HTTP_HOST": "127.0.0.1",
        # A configured secret must never reach a log line (checked below).
        "KAFKA_SASL_PASSWORD": SECRET,
    }
    services = {
        "sim": Service(
            "market-sim",
            "tickpipe_market_sim",
            {
                "SIM_HOST": "127.0.0.1",
                "SIM_PORT": str(sim_port),
                "SIM_RATE_PER_SYMBOL": "60",
                "SIM_MAX_EVENTS_PER_SYMBOL": str(EVENTS_PER_SYMBOL),
                # A fixed run that reaches its subscribers whole: symbols trade while subscribed.
                "SIM_TRADING": "while_subscribed",
                "SIM_BAR_INTERVAL": "0.5",
                # Often enough that each kind comes several times for each stock symbol.
                "SIM_CORRECTION_PROBABILITY": "0.1",
                "SIM_CANCEL_PROBABILITY": "0.05",
                "SIM_HALT_PROBABILITY": "0.03",
            },
            tmp_path / "sim.log",
        ),
        "consumer": Service(
            "consumer",
            "tickpipe_consumer",
            {
                **kafka,
                "DATABASE_URL": fresh_database,
                "KAFKA_GROUP_ID": f"e2e-{uuid.uuid4().hex[:8]}",
                "HTTP_PORT": str(ports["consumer"]),
                "HTTP_HOST": "127.0.0.1",
                "BATCH_MAX_SECONDS": "0.2",
            },
            tmp_path / "consumer.log",
        ),
        "stocks": Service(
            "producer-stocks",
            "tickpipe_producer_stocks",
            {
                **producer_env,
                "SYMBOLS": ",".join(STOCKS),
                "CHANNELS": "trades,quotes,bars,statuses,lulds",
                "HTTP_PORT": str(ports["stocks"]),
            },
            tmp_path / "producer-stocks.log",
        ),
        "crypto": Service(
            "producer-crypto",
            "tickpipe_producer_crypto",
            {
                **producer_env,
                "SYMBOLS": ",".join(CRYPTO),
                "CHANNELS": "trades,quotes,bars,orderbooks",
                "HTTP_PORT": str(ports["crypto"]),
            },
            tmp_path / "producer-crypto.log",
        ),
    }
    try:
        services["sim"].start().wait_http(f"http://127.0.0.1:{sim_port}/healthz")
        services["consumer"].start().wait_http(f"http://127.0.0.1:{ports['consumer']}/readyz")
        for name in ("stocks", "crypto"):
            services[name].start().wait_http(f"http://127.0.0.1:{ports[name]}/healthz")
        yield {
            "services": services,
            "ports": ports,
            "sim_port": sim_port,
            "dsn": fresh_database,
            "env": producer_env,
            "tmp": tmp_path,
        }
    finally:
        for service in services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()


def test_every_published_tick_is_stored_exactly_once(pipeline: dict[str, Any]) -> None:
    services, ports, dsn = pipeline["services"], pipeline["ports"], pipeline["dsn"]
    stats_url = f"http://127.0.0.1:{pipeline['sim_port']}/stats"

    # 1. The simulator sends its fixed amount of trades and quotes for every symbol.
    def feed_done() -> bool:
        sent = sim_sent(http_json(stats_url))
        return all(
            sent[(symbol, kind)] >= EVENTS_PER_SYMBOL
            for symbol in STOCKS + CRYPTO
            for kind in ("trade", "quote")
        )

    wait_for(feed_done, 90, "the simulator to send every tick")

    # The run is over when the simulator says nothing more will be generated (the last bars
    # and late prints included) and every generated event has been sent.
    def run_finished() -> bool:
        return sim_run_over(http_json(stats_url), SUBSCRIBED_KINDS)

    wait_for(run_finished, 60, "the simulator to finish its run")
    stats = http_json(stats_url)
    sent = sim_sent(stats)
    assert sum(sent.values()) == stats["totals"]["messages"]

    # 2. Everything sent lands in the table: compare per symbol and kind.
    wait_for(lambda: sum(db_counts(dsn).values()) >= sum(sent.values()), 60, "rows to land")

    # ...and the consumer has written (or skipped as a copy) every message published, so no
    # late extra row can still come.
    def consumer_done() -> bool:
        published = sum(
            metric_sum(ports[n], "tickpipe_producer_ticks_published_total")
            for n in ("stocks", "crypto")
        )
        handled = sum(
            metric_sum(ports["consumer"], name)
            for name in (
                "tickpipe_consumer_rows_inserted_total",
                "tickpipe_consumer_duplicates_skipped_total",
            )
        )
        return handled >= published

    wait_for(consumer_done, 60, "the consumer to handle every published tick")
    assert db_counts(dsn) == sent

    # 3. The producers published (acks=all) and backed up exactly what they received.
    published = sum(
        metric_sum(ports[n], "tickpipe_producer_ticks_published_total")
        for n in ("stocks", "crypto")
    )
    assert published == sum(sent.values())
    backup_rows = sum(
        len(path.read_text().splitlines()) - 1
        for path in (pipeline["tmp"] / "backup").rglob("*.csv")
    )
    assert backup_rows == sum(sent.values())

    # Trade ids run 1..N per symbol: nothing missing, nothing twice.
    for symbol in STOCKS + CRYPTO:
        assert trade_ids(dsn, symbol) == list(range(1, EVENTS_PER_SYMBOL + 1)), symbol
    with psycopg.connect(dsn) as conn:
        # Nanoseconds survive: the simulator never sends whole microseconds.
        whole_micros, mismatched = conn.execute(
            "SELECT count(*) FILTER (WHERE ts_ns % 1000 = 0),"
            " count(*) FILTER (WHERE ts_ns / 1000 <> (extract(epoch FROM ts) * 1000000)::bigint)"
            " FROM market_ticks WHERE kind IN ('trade', 'quote')"
        ).fetchone() or (None, None)
        assert (whole_micros, mismatched) == (0, 0)

    # The version-3 kinds went the whole way, and the corrected view applies them.
    for symbol in STOCKS:
        for kind in AMENDING_KINDS:
            assert sent[(symbol, kind)] > 0, (symbol, kind)
    with psycopg.connect(dsn) as conn:
        corrected = conn.execute(
            "SELECT symbol, count(*), count(*) FILTER (WHERE corrected)"
            " FROM market_trades_corrected GROUP BY symbol"
        ).fetchall()
        for symbol, rows, applied in corrected:
            expected = sent[(symbol, "trade")] - sent[(symbol, "trade_cancel")]
            assert (rows, applied) == (expected, sent[(symbol, "trade_correction")]), symbol
        # Each correction's values are those of its trade in the view.
        mismatched = conn.execute(
            "SELECT count(*) FROM market_ticks c JOIN market_trades_corrected t"
            " ON t.symbol = c.symbol AND t.trade_id = c.corrected_trade_id"
            " WHERE c.kind = 'trade_correction'"
            " AND (t.price, t.size) IS DISTINCT FROM (c.corrected_price, c.corrected_size)"
        ).fetchone()
        assert mismatched == (0,)

    # 4. Replaying the stock backup publishes everything again; the table does not change.
    stock_rows = sum(n for (symbol, _), n in sent.items() if symbol in STOCKS)
    replay = subprocess.run(
        [sys.executable, "-m", "tickpipe_producer_stocks", "replay", "--since", "2000-01-01"],
        env={**pipeline["env"], "PATH": "/usr/bin:/bin", "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    assert f"replayed {stock_rows} ticks: {stock_rows} delivered, 0 failed" in replay.stdout
    consumer_port = ports["consumer"]
    wait_for(
        lambda: (
            metric_sum(consumer_port, "tickpipe_consumer_duplicates_skipped_total") >= stock_rows
        ),
        60,
        "the consumer to see the replay",
    )
    assert db_counts(dsn) == sent

    # 5. SIGTERM: every service stops cleanly.
    for name in ("stocks", "crypto", "consumer", "sim"):
        assert services[name].stop() == 0, services[name].log_tail()

    # 6. Logs: one JSON object per line with the agreed fields, and no secret anywhere.
    for service in services.values():
        text = service.log_path.read_text()
        assert SECRET not in text, f"{service.name} logged a secret"
        for line in text.splitlines():
            record = json.loads(line)
            assert {"time", "level", "service", "event"} <= record.keys(), line
    assert SECRET not in replay.stdout + replay.stderr
