"""Schema version 3 in a real PostgreSQL: each new kind stored once, the upgrade of a database
that holds ticks already, and the corrected views (a correction and a cancel applied to the
trades and to their 1-minute bars)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.unit.copy_rows import decode_copy_row
from tickpipe_common.schema import Tick, make_tick
from tickpipe_consumer.migrations import apply_migrations, load_migrations
from tickpipe_consumer.rows import COLUMN_NAMES, tick_to_row
from tickpipe_consumer.writer import TickWriter

T0 = 1_709_303_400_000_000_000  # 2024-03-01T14:30:00Z, a minute boundary
SECOND = 1_000_000_000
MINUTE = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


@pytest.fixture
def conn(fresh_database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_database, autocommit=True) as connection:
        yield connection


@pytest.fixture
def migrated(fresh_database: str, conn: psycopg.Connection[Any]) -> str:
    apply_migrations(conn)
    return fresh_database


def _tick(kind: str, ts_ns: int, symbol: str = "AAPL", **fields: Any) -> Tick:
    return make_tick(
        kind=kind,
        asset_class="stock",
        symbol=symbol,
        ts_ns=ts_ns,
        received_ns=ts_ns + 1000,
        feed="iex",
        **fields,
    )


def _trade(ts_ns: int, trade_id: int, price: float, size: float, exchange: str = "V") -> Tick:
    return _tick(
        "trade",
        ts_ns,
        price=price,
        size=size,
        exchange=exchange,
        trade_id=trade_id,
        conditions=("@",),
        tape="C",
    )


def _correction(ts_ns: int, trade: Tick, price: float, size: float, new_id: int) -> Tick:
    return _tick(
        "trade_correction",
        ts_ns,
        exchange=trade.exchange,
        tape=trade.tape,
        original_trade_id=trade.trade_id,
        original_price=trade.price,
        original_size=trade.size,
        original_conditions=trade.conditions,
        corrected_trade_id=new_id,
        corrected_price=price,
        corrected_size=size,
        corrected_conditions=("@", "I"),
    )


def _cancel(ts_ns: int, trade: Tick, trade_id: int | None = None, exchange: str = "") -> Tick:
    return _tick(
        "trade_cancel",
        ts_ns,
        trade_id=trade.trade_id if trade_id is None else trade_id,
        price=trade.price,
        size=trade.size,
        exchange=exchange or trade.exchange,
        tape=trade.tape,
        cancel_action="C",
    )


def _write(dsn: str, ticks: list[Tick]) -> int:
    writer = TickWriter(dsn)
    try:
        return writer.write([tick_to_row(t, "test-producer") for t in ticks]).inserted
    finally:
        writer.close()


def _stored(conn: psycopg.Connection[Any], kind: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM market_ticks WHERE kind = %s", (kind,)).fetchone()
    assert row is not None, kind
    assert conn.execute(
        "SELECT count(*) FROM market_ticks WHERE kind = %s", (kind,)
    ).fetchone() == (1,)
    names = [
        column.name
        for column in conn.execute("SELECT * FROM market_ticks LIMIT 0").description or ()
    ]
    return dict(zip(names, row, strict=True))


def test_each_new_kind_is_stored_with_its_fields_once(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    trade = _trade(T0 + SECOND, 7, 187.25, 100.0)
    ticks = [
        _correction(T0 + 2 * SECOND, trade, 187.26, 100.0, 1_000_000_000_007),
        _cancel(T0 + 3 * SECOND, trade),
        _tick(
            "trading_status",
            T0 + 4 * SECOND,
            tape="C",
            status_code="H",
            status_message="Trading Halt",
            reason_code="LUDP",
            reason_message="Volatility Trading Pause",
        ),
        _tick(
            "luld",
            T0 + 5 * SECOND,
            tape="C",
            limit_up_price=196.61,
            limit_down_price=177.89,
            luld_indicator="B",
        ),
    ]
    assert _write(migrated, ticks) == 4
    # Re-delivered (a replay, a redelivery after a crash): nothing is stored twice.
    assert _write(migrated, ticks) == 0
    assert conn.execute("SELECT count(*) FROM market_ticks").fetchone() == (4,)
    correction = _stored(conn, "trade_correction")
    assert {k: correction[k] for k in COLUMN_NAMES if k.startswith(("original", "corrected"))} == {
        "original_trade_id": 7,
        "original_price": 187.25,
        "original_size": 100.0,
        "original_conditions": ["@"],
        "corrected_trade_id": 1_000_000_000_007,
        "corrected_price": 187.26,
        "corrected_size": 100.0,
        "corrected_conditions": ["@", "I"],
    }
    assert (correction["exchange"], correction["tape"], correction["tick_id"]) == (
        "V",
        "C",
        ticks[0].tick_id,
    )
    cancel = _stored(conn, "trade_cancel")
    assert (cancel["trade_id"], cancel["price"], cancel["size"], cancel["cancel_action"]) == (
        7,
        187.25,
        100.0,
        "C",
    )
    status = _stored(conn, "trading_status")
    assert (status["status_code"], status["status_message"], status["reason_code"]) == (
        "H",
        "Trading Halt",
        "LUDP",
    )
    assert status["reason_message"] == "Volatility Trading Pause"
    band = _stored(conn, "luld")
    assert (band["limit_up_price"], band["limit_down_price"], band["luld_indicator"]) == (
        196.61,
        177.89,
        "B",
    )
    assert band["ts_ns"] == T0 + 5 * SECOND


def test_a_database_with_ticks_upgrades_to_version_3(
    fresh_database: str, conn: psycopg.Connection[Any]
) -> None:
    """What a running installation does: 0001-0003 applied and rows stored, then 0004."""
    before = [m for m in load_migrations() if m.version < 4]
    for migration in before:
        conn.execute(migration.sql)
    old_columns = [
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'market_ticks' ORDER BY ordinal_position"
        ).fetchall()
        if name != "ingested_at"
    ]
    # A row as the consumer encodes it, read back as values: those of the old columns.
    values = decode_copy_row(tick_to_row(_trade(T0, 1, 10.0, 1.0), None).data)
    old = [values[name] for name in old_columns]
    placeholders = ", ".join(["%s"] * len(old_columns))
    conn.execute(
        f"INSERT INTO market_ticks ({', '.join(old_columns)}) VALUES ({placeholders})",  # noqa: S608 - our own column names
        old,
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO market_ticks (tick_id, ts, ts_ns, kind, asset_class, symbol, feed) "
            "VALUES (gen_random_uuid(), now(), 1, 'luld', 'stock', 'X', 'f')"
        )
    applied = apply_migrations(conn)
    assert "0004_trade_amendments" in applied
    assert conn.execute("SELECT count(*), min(price) FROM market_ticks").fetchone() == (1, 10.0)
    trade = _trade(T0, 1, 10.0, 1.0)
    assert _write(fresh_database, [_cancel(T0 + SECOND, trade)]) == 1
    # Idempotent: the file again changes nothing, the check keeps refusing unknown kinds.
    conn.execute(load_migrations()[3].sql)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO market_ticks (tick_id, ts, ts_ns, kind, asset_class, symbol, feed) "
            "VALUES (gen_random_uuid(), now(), 1, 'rumour', 'stock', 'X', 'f')"
        )


def test_the_corrected_views_apply_corrections_and_cancels(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    t1 = _trade(T0 + 1 * SECOND, 1, 10.0, 5.0)
    t2 = _trade(T0 + 10 * SECOND, 2, 14.0, 1.0)  # printed as the high: corrected to 11
    t3 = _trade(T0 + 20 * SECOND, 3, 9.0, 2.0)  # the low: cancelled
    t4 = _trade(T0 + 30 * SECOND, 4, 12.0, 1.0)  # corrected in size, then its new id cancelled
    t5 = _trade(T0 + 50 * SECOND, 5, 10.5, 3.0)  # the close
    t6 = _trade(T0 + 70 * SECOND, 6, 20.0, 1.0)  # the next minute, untouched
    other = _trade(T0 + 40 * SECOND, 3, 9.5, 4.0, exchange="Q")  # id 3 on another exchange
    later = T0 + 61 * SECOND  # the amendments come after the minute closed
    amendments = [
        _correction(later, t2, 11.0, 1.0, 102),
        _cancel(later + 1, t3),
        _correction(later + 2, t4, 12.0, 6.0, 104),
        _cancel(later + 3, t4, trade_id=104),
        _cancel(later + 4, t1, exchange="P"),  # another exchange's trade 1: not t1
    ]
    assert _write(migrated, [t1, t2, t3, t4, t5, t6, other]) == 7
    as_printed = conn.execute(
        "SELECT open, high, low, close, volume, trade_count FROM market_bars_1m "
        "WHERE symbol = 'AAPL' AND bucket = %s",
        (MINUTE,),
    ).fetchone()
    assert as_printed == (10.0, 14.0, 9.0, 10.5, 16.0, 6)
    assert _write(migrated, amendments) == 5
    assert _write(migrated, amendments[:2]) == 0  # a re-delivered correction changes nothing

    trades = conn.execute(
        "SELECT trade_id, exchange, price, size, conditions, corrected, ts_ns "
        "FROM market_trades_corrected WHERE symbol = 'AAPL' ORDER BY ts_ns"
    ).fetchall()
    assert trades == [
        (1, "V", 10.0, 5.0, ["@"], False, t1.ts_ns),
        (102, "V", 11.0, 1.0, ["@", "I"], True, t2.ts_ns),
        (3, "Q", 9.5, 4.0, ["@"], False, other.ts_ns),
        (5, "V", 10.5, 3.0, ["@"], False, t5.ts_ns),
        (6, "V", 20.0, 1.0, ["@"], False, t6.ts_ns),
    ]
    bars = conn.execute(
        "SELECT bucket, open, high, low, close, volume, trade_count "
        "FROM market_bars_1m_corrected WHERE symbol = 'AAPL' ORDER BY bucket"
    ).fetchall()
    assert bars == [
        (MINUTE, 10.0, 11.0, 9.5, 10.5, 13.0, 4),
        (datetime(2024, 3, 1, 14, 31, tzinfo=UTC), 20.0, 20.0, 20.0, 20.0, 1.0, 1),
    ]
    # The aggregate of the prints is left as it was; the corrected one has its columns.
    assert conn.execute(
        "SELECT high, low, trade_count FROM market_bars_1m WHERE symbol = 'AAPL' AND bucket = %s",
        (MINUTE,),
    ).fetchone() == (14.0, 9.0, 6)
    for view in ("market_bars_1m", "market_bars_1m_corrected"):
        types = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position",
            (view,),
        ).fetchall()
        assert [t for _, t in types] == [
            "timestamp with time zone",
            "text",
            *["double precision"] * 5,
            "bigint",
        ], view


def test_an_amendment_a_day_later_is_not_matched(
    migrated: str, conn: psycopg.Connection[Any]
) -> None:
    """Trade ids are unique per symbol, exchange and tape within a trading day; the views match
    an amendment to a trade within a day after it."""
    trade = _trade(T0, 9, 10.0, 1.0)
    day = 86_400 * SECOND
    assert _write(migrated, [trade, _cancel(T0 + day + SECOND, trade)]) == 2
    assert conn.execute("SELECT count(*) FROM market_trades_corrected").fetchone() == (1,)
