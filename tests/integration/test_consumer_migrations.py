"""The consumer's schema against a real PostgreSQL: migrations, the writer, the bars view."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tickpipe_common.schema import Tick
from tickpipe_consumer.migrations import (
    apply_migrations,
    apply_retention,
    database_features,
    load_migrations,
)
from tickpipe_consumer.rows import COLUMN_NAMES, Row, tick_to_row
from tickpipe_consumer.writer import RowsRejectedError, TickWriter

T0 = 1_709_303_400_000_000_000  # 2024-03-01T14:30:00Z, a minute boundary


@pytest.fixture
def conn(fresh_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_database, autocommit=True) as connection:
        yield connection


@pytest.fixture
def migrated(fresh_database: str, conn: psycopg.Connection[Any]) -> str:
    apply_migrations(conn)
    return fresh_database


def _timescaledb_available(conn: psycopg.Connection[Any]) -> bool:
    found = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return found is not None


def _trade(symbol: str, ts_ns: int, price: float, size: float = 1.0, trade_id: int = 1) -> Row:
    tick = Tick.model_validate(
        {
            "kind": "trade",
            "asset_class": "crypto" if "/" in symbol else "stock",
            "symbol": symbol,
            "ts": ts_ns,
            "received_at": ts_ns + 1000,
            "feed": "test",
            "price": price,
            "size": size,
            "exchange": "V",
            "trade_id": trade_id,
            "conditions": ["@", "T"],
        }
    )
    return tick_to_row(tick, "test-producer")


def test_migrations_apply_once_and_twice_is_a_no_op(conn: psycopg.Connection[Any]) -> None:
    names = [f"{m.version:04d}_{m.name}" for m in load_migrations()]
    assert apply_migrations(conn) == names
    assert apply_migrations(conn) == []
    history = conn.execute(
        "SELECT version, name, checksum FROM tickpipe_schema_migrations ORDER BY version"
    ).fetchall()
    assert [(v, n, c) for v, n, c in history] == [
        (m.version, m.name, m.checksum) for m in load_migrations()
    ]
    # The files themselves are idempotent too (a restored backup, a hand-run file).
    for migration in load_migrations():
        conn.execute(migration.sql)
    count = conn.execute("SELECT count(*) FROM tickpipe_schema_migrations").fetchone()
    assert count == (len(load_migrations()),)


def test_table_shape(migrated: str, conn: psycopg.Connection[Any]) -> None:
    columns = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'market_ticks' ORDER BY ordinal_position"
    ).fetchall()
    assert {name for name, _ in columns} == {*COLUMN_NAMES, "ingested_at"}
    types = dict(columns)
    assert types["ts"] == "timestamp with time zone"
    assert types["ts_ns"] == "bigint"
    assert types["conditions"] == "ARRAY"
    assert types["bids"] == "jsonb"
    assert types["price"] == "double precision"
    primary_key = conn.execute(
        "SELECT a.attname FROM pg_index i "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = 'market_ticks'::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)"
    ).fetchall()
    assert [name for (name,) in primary_key] == ["symbol", "ts", "tick_id"]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO market_ticks (tick_id, ts, ts_ns, kind, asset_class, symbol, feed) "
            "VALUES (gen_random_uuid(), now(), 1, 'rumour', 'stock', 'X', 'f')"
        )


def test_plain_postgres_path_reports_its_features(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    features = database_features(conn)
    available = _timescaledb_available(conn)
    assert features["timescaledb"] is available
    assert features["hypertable"] is available
    if not available:
        assert apply_retention(conn, 0) == "none"
        assert apply_retention(conn, 30) == "unsupported"


def test_concurrent_starts_apply_each_migration_once(fresh_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            with psycopg.connect(fresh_database, autocommit=True) as own:
                results.append(apply_migrations(own))
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    applied = sorted(name for names in results for name in names)
    assert applied == sorted(f"{m.version:04d}_{m.name}" for m in load_migrations())


def test_writer_stores_exact_values_and_skips_duplicates(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    ts_ns = T0 + 123_456_789
    a = _trade("AAPL", ts_ns, 171.25, trade_id=1)
    b = _trade("AAPL", ts_ns, 171.26, trade_id=2)  # same instant, another trade
    book = Tick.model_validate(
        {
            "kind": "orderbook",
            "asset_class": "crypto",
            "symbol": "BTC/USD",
            "ts": ts_ns,
            "received_at": ts_ns,
            "feed": "us",
            "bids": [{"price": 64123.1, "size": 0.0123456789}],
            "asks": [{"price": 64124.9, "size": 0}],
            "reset": False,
        }
    )
    c = tick_to_row(book, None)
    writer = TickWriter(migrated)
    try:
        # New ticks: the optimistic COPY straight into the table.
        first = writer.write([a, c])
        assert first.path == "copy"
        assert {k: t.inserted for k, t in first.by_kind.items()} == {"trade": 1, "orderbook": 1}
        assert first.by_kind["trade"].sample_ts_ns == [ts_ns]
        # A stored tick in the batch (and the same tick twice in it): the COPY is refused
        # and rolled back whole, the staging path folds them, and only b is new.
        second = writer.write([a, a, b])
        assert second.path == "staging"
        assert {k: t.inserted for k, t in second.by_kind.items()} == {"trade": 1}
        again = writer.write([b, a, c])
        assert (again.path, again.inserted) == ("staging", 0)
        # A batch with no duplicate returns the writer to the COPY path after it.
        d = _trade("AAPL", ts_ns + 1, 171.27, trade_id=3)
        assert writer.write([d]).path == "staging"
        e = _trade("AAPL", ts_ns + 2, 171.28, trade_id=4)
        assert writer.write([e]).path == "copy"
    finally:
        writer.close()
    row = conn.execute(
        "SELECT ts, ts_ns, conditions, producer, received_at, ingested_at IS NOT NULL "
        "FROM market_ticks WHERE symbol = 'AAPL' AND price = 171.25"
    ).fetchone()
    assert row == (
        datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=UTC),
        ts_ns,
        ["@", "T"],
        "test-producer",
        datetime(2024, 3, 1, 14, 30, 0, 123457, tzinfo=UTC),
        True,
    )
    bids, asks = conn.execute(
        "SELECT bids, asks FROM market_ticks WHERE symbol = 'BTC/USD'"
    ).fetchone() or (None, None)
    assert bids == [{"price": 64123.1, "size": 0.0123456789}]
    assert asks == [{"price": 64124.9, "size": 0}]
    assert conn.execute("SELECT count(*) FROM market_ticks").fetchone() == (5,)


def test_writer_reports_refused_data_separately(migrated: str) -> None:
    writer = TickWriter(migrated)
    try:
        good = _trade("AAPL", T0, 1.0)
        # A kind past every check in Python, not the table's: its field swapped in the bytes.
        data = good.data.replace(b"\x00\x00\x00\x05trade", b"\x00\x00\x00\x06rumour", 1)
        assert data != good.data
        bad = good._replace(data=data)
        with pytest.raises(RowsRejectedError):
            writer.write([_trade("AAPL", T0, 2.0, trade_id=5), bad])
        # The connection survives a refused batch and the next one goes through.
        assert writer.write([_trade("AAPL", T0, 2.0, trade_id=5)]).inserted == 1
    finally:
        writer.close()


def test_market_bars_1m_is_queryable_with_ohlcv(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    second = 1_000_000_000
    rows = [
        _trade("AAPL", T0 + 1 * second, 10.0, 5, trade_id=1),
        _trade("AAPL", T0 + 30 * second, 12.0, 1, trade_id=2),
        _trade("AAPL", T0 + 20 * second, 9.0, 2, trade_id=3),
        _trade("AAPL", T0 + 59 * second + 999_999_999, 11.0, 3, trade_id=4),
        _trade("AAPL", T0 + 60 * second, 20.0, 1, trade_id=5),  # the next minute
        _trade("MSFT", T0 + 5 * second, 400.0, 7, trade_id=1),
    ]
    quote = Tick.model_validate(
        {
            "kind": "quote",
            "asset_class": "stock",
            "symbol": "AAPL",
            "ts": T0 + 2 * second,
            "received_at": T0 + 2 * second,
            "feed": "test",
            "bid_price": 1.0,
            "bid_size": 1,
            "ask_price": 99.0,
            "ask_size": 1,
        }
    )
    writer = TickWriter(migrated)
    try:
        writer.write([*rows, tick_to_row(quote, None)])
    finally:
        writer.close()
    bars = conn.execute(
        "SELECT bucket, symbol, open, high, low, close, volume, trade_count "
        "FROM market_bars_1m ORDER BY symbol, bucket"
    ).fetchall()
    minute = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    assert bars == [
        (minute, "AAPL", 10.0, 12.0, 9.0, 11.0, 11.0, 4),
        (datetime(2024, 3, 1, 14, 31, tzinfo=UTC), "AAPL", 20.0, 20.0, 20.0, 20.0, 1.0, 1),
        (minute, "MSFT", 400.0, 400.0, 400.0, 400.0, 7.0, 1),
    ]
    types = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'market_bars_1m' ORDER BY ordinal_position"
    ).fetchall()
    assert types == [
        ("bucket", "timestamp with time zone"),
        ("symbol", "text"),
        ("open", "double precision"),
        ("high", "double precision"),
        ("low", "double precision"),
        ("close", "double precision"),
        ("volume", "double precision"),
        ("trade_count", "bigint"),
    ]


def test_timescaledb_statements_are_well_formed(conn: psycopg.Connection[Any]) -> None:
    """The TimescaleDB branch cannot run here, but its SQL must at least parse: run each
    dynamic statement in a rolled-back transaction and accept anything but a syntax error."""
    apply_migrations(conn)
    statements = [
        match.group(1)
        for migration in load_migrations()
        for match in re.finditer(r"EXECUTE \$sql\$(.*?)\$sql\$", migration.sql.decode(), re.S)
    ]
    assert len(statements) == 2
    for statement in statements:
        try:
            with conn.transaction(force_rollback=True):
                conn.execute(statement.encode())
        except psycopg.errors.SyntaxError as exc:
            pytest.fail(f"syntax error in {statement!r}: {exc}")
        except psycopg.Error:
            pass  # unknown function or option namespace on plain PostgreSQL: expected


def test_migrate_command(fresh_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": fresh_database, "LOG_FORMAT": "json"}
    started = time.monotonic()
    for applied in ('"0001_market_ticks"', "[]"):
        result = subprocess.run(
            [sys.executable, "-m", "tickpipe_consumer", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr + result.stdout
        assert '"event":"database_features"' in result.stdout
        done = next(line for line in result.stdout.splitlines() if "migrations_done" in line)
        assert applied in done
    assert time.monotonic() - started < 30


def test_migrate_command_fails_cleanly_without_a_database(fresh_database: str) -> None:
    unreachable = psycopg.conninfo.make_conninfo(fresh_database, port=1)
    result = subprocess.run(
        [sys.executable, "-m", "tickpipe_consumer", "migrate"],
        env={**os.environ, "DATABASE_URL": unreachable, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "migrate_failed" in result.stdout
