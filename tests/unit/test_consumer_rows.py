"""Tick → market_ticks row: exact timestamps, arrays, orderbook JSON, and the last checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources

import pytest
from confluent_kafka import Message

from tests.unit import ticks
from tickpipe_common.schema import (
    AssetClass,
    RejectReason,
    Tick,
    TickKind,
    TickRejected,
    decode_tick,
    decode_tick_fast,
    encode_tick,
)
from tickpipe_consumer.batch import prepare_row
from tickpipe_consumer.migrations import load_migrations
from tickpipe_consumer.rows import (
    BODY_ENCODERS,
    COLUMN_NAMES,
    COLUMN_TYPES,
    HEAD_COLUMNS,
    KIND_COLUMNS,
    UNROLLED_IN_USE,
    Row,
    plan_body,
    producer_from_headers,
    tick_to_row,
)

from .copy_rows import decode_copy_row

TS = "2024-03-01T14:30:00.123456789Z"
TS_NS = 1_709_303_400_123_456_789


def _trade(**overrides: object) -> Tick:
    fields: dict[str, object] = {
        "kind": "trade",
        "asset_class": "stock",
        "symbol": "AAPL",
        "ts": TS,
        "received_at": "2024-03-01T14:30:00.200000001Z",
        "feed": "iex",
        "price": 171.25,
        "size": 100.0,
        "exchange": "V",
        "trade_id": 52983525029461,
        "conditions": ["@", "I"],
        "tape": "C",
    }
    fields.update(overrides)
    return Tick.model_validate(fields)


def _column(row: Row, name: str) -> object:
    return decode_copy_row(row.data)[name]


def test_timestamps_are_exact_ns_and_truncated_us() -> None:
    row = tick_to_row(_trade(), "producer-stocks")
    assert _column(row, "ts_ns") == TS_NS
    assert _column(row, "ts") == datetime(2024, 3, 1, 14, 30, 0, 123456, tzinfo=UTC)
    # .200000001 s: the microsecond column truncates, never rounds.
    assert _column(row, "received_at") == datetime(2024, 3, 1, 14, 30, 0, 200000, tzinfo=UTC)


def test_microsecond_is_truncated_not_rounded() -> None:
    row = tick_to_row(_trade(ts="2024-12-31T23:59:59.999999999Z"), None)
    assert _column(row, "ts") == datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert _column(row, "ts_ns") == 1_735_689_599_999_999_999


def test_trade_row_fields() -> None:
    tick = _trade()
    row = tick_to_row(tick, "producer-stocks")
    assert len(decode_copy_row(row.data)) == len(COLUMN_NAMES) == len(COLUMN_TYPES)
    assert (row.kind, row.ts_ns) == ("trade", TS_NS)
    assert _column(row, "tick_id") == tick.tick_id
    assert _column(row, "kind") == "trade"
    assert _column(row, "asset_class") == "stock"
    assert _column(row, "price") == 171.25
    assert _column(row, "trade_id") == 52983525029461
    assert _column(row, "conditions") == ["@", "I"]
    assert _column(row, "producer") == "producer-stocks"
    for name in ("bid_price", "open", "bids", "asks", "reset", "vwap", "trade_count"):
        assert _column(row, name) is None, name


def test_trade_without_conditions_is_null_not_empty_array() -> None:
    row = tick_to_row(_trade(conditions=None), None)
    assert _column(row, "conditions") is None
    row = tick_to_row(_trade(conditions=[]), None)
    assert _column(row, "conditions") == []


def test_orderbook_levels_become_json_with_exact_floats() -> None:
    tick = Tick.model_validate(
        {
            "kind": "orderbook",
            "asset_class": "crypto",
            "symbol": "BTC/USD",
            "ts": TS,
            "received_at": TS,
            "feed": "us",
            "bids": [{"price": 64123.1, "size": 0.0123456789}, {"price": 64123.0, "size": 0}],
            "asks": [],
            "reset": True,
        }
    )
    row = tick_to_row(tick, None)
    assert _column(row, "bids") == [
        {"price": 64123.1, "size": 0.0123456789},
        {"price": 64123.0, "size": 0.0},
    ]
    assert _column(row, "asks") == []
    assert _column(row, "reset") is True
    assert _column(row, "price") is None


def test_quote_and_bar_fields() -> None:
    quote = Tick.model_validate(
        {
            "kind": "quote",
            "asset_class": "stock",
            "symbol": "MSFT",
            "ts": TS,
            "received_at": TS,
            "feed": "sip",
            "bid_price": 410.1,
            "bid_size": 3,
            "bid_exchange": "Q",
            "ask_price": 410.2,
            "ask_size": 5,
            "ask_exchange": "N",
        }
    )
    row = tick_to_row(quote, None)
    assert (_column(row, "bid_price"), _column(row, "ask_exchange")) == (410.1, "N")
    bar = Tick.model_validate(
        {
            "kind": "bar",
            "asset_class": "crypto",
            "symbol": "ETH/USD",
            "ts": "2024-03-01T14:30:00Z",
            "received_at": TS,
            "feed": "us",
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 10.25,
            "vwap": 1.2,
            "trade_count": 7,
        }
    )
    row = tick_to_row(bar, None)
    assert _column(row, "ts_ns") == 1_709_303_400_000_000_000
    assert [_column(row, c) for c in ("open", "high", "low", "close", "volume", "vwap")] == [
        1.0,
        2.0,
        0.5,
        1.5,
        10.25,
        1.2,
    ]
    assert _column(row, "trade_count") == 7


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"exchange": "V\x00"}, "exchange"),
        ({"conditions": ["@", "\x00"]}, "conditions"),
    ],
)
def test_values_postgres_cannot_store_are_rejected(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(TickRejected) as caught:
        tick_to_row(_trade(**overrides), None)
    assert caught.value.reason is RejectReason.INVALID_VALUE
    assert caught.value.detail.startswith(field)


def test_largest_int8_trade_id_is_fine() -> None:
    row = tick_to_row(_trade(trade_id=2**63 - 1), None)
    assert _column(row, "trade_id") == 2**63 - 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ([], None),
        ([("content-type", b"application/json")], None),
        ([("tickpipe-producer", b"producer-crypto")], "producer-crypto"),
        ([("tickpipe-producer", None)], None),
        ([("tickpipe-producer", b"bad\x00\xff")], "bad\ufffd"),
        ({"tickpipe-producer": "producer-stocks"}, "producer-stocks"),
    ],
)
def test_producer_header(headers: object, expected: str | None) -> None:
    assert producer_from_headers(headers) == expected  # type: ignore[arg-type]


def test_table_migration_matches_columns_and_enums() -> None:
    """The SQL schema and this mapping must not drift apart from the schema's enums."""
    migrations = [m.sql.decode() for m in load_migrations()]
    table_sql = migrations[0]
    every_sql = "\n".join(migrations)
    for name in (*COLUMN_NAMES, "ingested_at"):
        column = rf"^\s+(ADD COLUMN IF NOT EXISTS )?{name}\s"
        assert re.search(column, every_sql, re.MULTILINE), name
    # The newest definition of the kind check (0001's, widened by 0004) has every kind.
    newest_check = [sql for sql in migrations if "market_ticks_kind_check CHECK" in sql][-1]
    assert _check_values(newest_check, "market_ticks_kind_check") == {k.value for k in TickKind}
    assert _check_values(table_sql, "market_ticks_asset_class_check") == {
        a.value for a in AssetClass
    }


def _check_values(table_sql: str, constraint: str) -> set[str]:
    clause = re.search(rf"{constraint} CHECK \((.*?)\)", table_sql, re.DOTALL)
    assert clause is not None, constraint
    return set(re.findall(r"'(\w+)'", clause.group(1)))


def test_migrations_are_packaged_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "market_ticks"
    folder = resources.files("tickpipe_consumer").joinpath("migrations")
    assert sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql")) == [
        f"{m.version:04d}_{m.name}.sql" for m in migrations
    ]


def test_a_nul_escape_in_the_message_is_caught_on_the_fast_path() -> None:
    good = encode_tick(_trade())
    bad = good.replace(b'"exchange":"V"', b'"exchange":"V\\u0000"')
    assert bad != good
    message = Message(topic="t", partition=0, offset=1, key=b"AAPL", value=good)
    assert prepare_row(message, now_ns=2**62, max_future_ns=0).kind == "trade"
    message = Message(topic="t", partition=0, offset=1, key=b"AAPL", value=bad)
    with pytest.raises(TickRejected) as caught:
        prepare_row(message, now_ns=2**62, max_future_ns=0)
    assert caught.value.reason is RejectReason.INVALID_VALUE
    assert caught.value.detail.startswith("exchange")


def test_every_kind_fills_exactly_its_columns() -> None:
    """KIND_COLUMNS is what the encoder follows: no other column of a row is set."""
    assert set(KIND_COLUMNS) == set(TickKind)
    common = {*HEAD_COLUMNS, "producer"}
    for kind, columns in KIND_COLUMNS.items():
        assert common.isdisjoint(columns), kind
        assert set(columns) <= set(COLUMN_NAMES), kind


def test_text_that_is_not_utf8_is_rejected_not_sent() -> None:
    # Both decoders refuse a lone surrogate already; a tick built another way is caught here.
    tick = _trade().model_copy(update={"exchange": "\ud800"})
    with pytest.raises(TickRejected) as caught:
        tick_to_row(tick, None)
    assert caught.value.reason is RejectReason.INVALID_VALUE


def test_timestamps_before_2000_and_at_the_ends_of_the_range() -> None:
    # timestamptz counts microseconds from 2000-01-01: earlier times are negative.
    row = tick_to_row(_trade(ts=1, received_at=2**63 - 1), None)
    values = decode_copy_row(row.data)
    assert values["ts"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert values["ts_ns"] == 1
    assert values["received_at"] == datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
    row = tick_to_row(_trade(ts="1999-12-31T23:59:59.999999999Z"), None)
    assert _column(row, "ts") == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_text_is_utf8_and_the_producer_null_when_absent() -> None:
    row = tick_to_row(_trade(symbol="ÄPL€", conditions=["Ü", ""]), None)
    values = decode_copy_row(row.data)
    assert (values["symbol"], values["conditions"], values["producer"]) == (
        "ÄPL€",
        ["Ü", ""],
        None,
    )


@pytest.mark.parametrize(
    "make",
    [
        ticks.trade,
        ticks.quote,
        ticks.bar,
        ticks.orderbook,
        ticks.correction,
        ticks.trade_cancel,
        ticks.trading_status,
        ticks.luld,
    ],
)
def test_every_field_a_tick_carries_is_stored_and_no_other(make: Callable[[], Tick]) -> None:
    """Each kind (version 3's too), from either decoder: every column after the head is the
    tick's field of that name, NULL where the tick has none."""
    tick = make()
    value = encode_tick(tick)
    for decoded in (decode_tick(value), decode_tick_fast(value)):
        stored = decode_copy_row(tick_to_row(decoded, "producer-stocks").data)
        assert (stored["kind"], stored["ts_ns"], stored["tick_id"]) == (
            tick.kind,
            tick.ts_ns,
            tick.tick_id,
        )
        for name in COLUMN_NAMES[len(HEAD_COLUMNS) : -1]:
            carried = getattr(tick, name)
            if name in ("bids", "asks") and carried is not None:
                carried = [{"price": lv.price, "size": lv.size} for lv in carried]
            elif isinstance(carried, tuple):
                carried = list(carried)
            assert stored[name] == carried, (tick.kind, name)
        assert stored["producer"] == "producer-stocks"


def test_unrolled_encoders_match_the_plans() -> None:
    """The hand-unrolled quote and trade encoders are in use, and give the plans' bytes."""
    assert UNROLLED_IN_USE, "COLUMNS changed: update rows._UNROLLED_FOR and the unrolled encoders"
    quote = {
        "kind": "quote",
        "asset_class": "stock",
        "symbol": "MSFT",
        "ts": TS,
        "received_at": TS,
        "feed": "sip",
        "bid_price": 410.1,
        "bid_size": 3,
        "ask_price": 410.2,
        "ask_size": 5,
    }
    variants = [
        _trade(),
        _trade(exchange=None, trade_id=None, conditions=None, tape=None),
        _trade(conditions=[], taker_side="B"),
        Tick.model_validate(quote),
        Tick.model_validate({**quote, "bid_exchange": "Q", "ask_exchange": "N", "tape": "C"}),
        Tick.model_validate({**quote, "conditions": ["R", "Z"]}),
    ]
    for tick in variants:
        for decoded in (tick, decode_tick_fast(encode_tick(tick))):
            assert BODY_ENCODERS[tick.kind] is not plan_body
            assert BODY_ENCODERS[tick.kind](decoded) == plan_body(decoded), tick
