from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

import pytest

from tests.unit.ticks import (
    TS,
    bar,
    correction,
    luld,
    orderbook,
    quote,
    trade,
    trade_cancel,
    trading_status,
)
from tickpipe_common import schema
from tickpipe_common.schema import (
    TEXT_BOUNDS,
    FastTick,
    FastTickV3,
    RejectReason,
    Tick,
    TickFields,
    TickRejected,
    check_storable,
    decode_tick,
    decode_tick_fast,
    encode_tick,
    kafka_headers,
    make_tick,
)


@pytest.mark.parametrize(
    "make", [trade, quote, bar, orderbook, correction, trade_cancel, trading_status, luld]
)
def test_round_trip_is_exact(make: Callable[[], Tick]) -> None:
    tick = make()
    decoded = decode_tick(encode_tick(tick))
    assert decoded == tick
    assert decoded.tick_id == tick.tick_id


def test_wire_format_is_readable_and_keeps_nanoseconds() -> None:
    doc = json.loads(encode_tick(trade()))
    assert doc["schema_version"] == 1
    assert doc["ts"] == "2024-03-01T14:30:00.123456789Z"
    assert doc["price"] == 187.25
    assert "bid_price" not in doc  # fields of other kinds are left off


def test_identity_is_deterministic_and_ignores_receive_time() -> None:
    assert trade().tick_id == trade(received_ns=TS + 999).tick_id
    assert trade().tick_id == trade(feed="sip").tick_id  # the same trade seen on another feed
    assert trade().tick_id != trade(trade_id=43).tick_id
    assert trade().tick_id != trade(exchange="P").tick_id
    assert trade().tick_id != trade(ts_ns=TS + 1).tick_id  # one nanosecond apart
    assert quote().tick_id != quote(bid_price=187.21).tick_id
    assert bar().tick_id == bar(close=1.0).tick_id  # one bar per symbol and minute
    assert bar(kind="updated_bar").tick_id != bar(kind="updated_bar", close=1.0).tick_id


def test_kind_requires_its_fields() -> None:
    with pytest.raises(ValueError, match="a trade needs price"):
        trade(price=None)
    with pytest.raises(ValueError, match="a quote needs"):
        quote(ask_size=None)


def test_price_signature_by_kind() -> None:
    assert trade().price_signature() == (187.25,)
    assert quote().price_signature() == (187.2, 187.3)
    assert bar().price_signature() == (61_050.0,)
    assert orderbook().price_signature() is None


def test_headers() -> None:
    assert dict(kafka_headers("producer-stocks")) == {
        "content-type": b"application/json",
        "tickpipe-schema-version": b"1",
        "tickpipe-producer": b"producer-stocks",
    }


def _reason(value: bytes | None) -> RejectReason:
    with pytest.raises(TickRejected) as caught:
        decode_tick(value)
    return caught.value.reason


def test_rejections_say_why() -> None:
    good = encode_tick(trade())
    assert _reason(None) is RejectReason.EMPTY
    assert _reason(b"") is RejectReason.EMPTY
    assert _reason(b"{not json") is RejectReason.NOT_JSON
    assert _reason(b"[1, 2]") is RejectReason.SCHEMA_VIOLATION
    assert _reason(good.replace(b'"schema_version":1', b'"schema_version":4')) is (
        RejectReason.UNSUPPORTED_SCHEMA_VERSION
    )
    assert _reason(good.replace(b"187.25", b"NaN")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b"187.25", b"Infinity")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b"187.25", b"-187.25")) is RejectReason.INVALID_VALUE
    assert _reason(good.replace(b'"kind":"trade"', b'"kind":"news"')) is (
        RejectReason.SCHEMA_VIOLATION
    )
    assert _reason(good.replace(b'"symbol"', b'"sym"')) is RejectReason.SCHEMA_VIOLATION
    assert _reason(good[:-1] + b',"extra":1}') is RejectReason.SCHEMA_VIOLATION


def test_check_storable() -> None:
    tick = trade()
    check_storable(tick, b"AAPL", now_ns=TS, max_future_ns=0)
    with pytest.raises(TickRejected) as caught:
        check_storable(tick, b"MSFT", now_ns=TS, max_future_ns=0)
    assert caught.value.reason is RejectReason.KEY_MISMATCH
    with pytest.raises(TickRejected) as caught:
        check_storable(tick, b"AAPL", now_ns=TS - 301 * 10**9, max_future_ns=300 * 10**9)
    assert caught.value.reason is RejectReason.FUTURE_TIMESTAMP


_ALL_KINDS = [trade, quote, bar, orderbook, lambda: bar(kind="updated_bar")]


@pytest.mark.parametrize("make", _ALL_KINDS)
@pytest.mark.parametrize("version", [1, 2])
def test_fast_decoder_gives_the_reference_fields_and_identity(
    make: Callable[[], Tick], version: int
) -> None:
    tick = make()
    value = encode_tick(tick, version)
    fast = decode_tick_fast(value)
    assert isinstance(cast(object, fast), FastTick)  # the fast path took it, not the fallback
    reference = decode_tick(value)
    assert fast.tick_id == reference.tick_id == tick.tick_id
    for name in Tick.model_fields:
        if name in ("schema_version", "carried_id", "bids", "asks"):
            continue
        assert getattr(fast, name) == getattr(reference, name), name
    for side in ("bids", "asks"):
        assert _levels(getattr(fast, side)) == _levels(getattr(reference, side))


_V3_KINDS = [correction, trade_cancel, trading_status, luld]


@pytest.mark.parametrize("make", _V3_KINDS)
def test_fast_decoder_takes_version_3_with_the_reference_fields_and_identity(
    make: Callable[[], Tick],
) -> None:
    tick = make()
    value = encode_tick(tick)
    assert json.loads(value)["schema_version"] == 3
    fast = decode_tick_fast(value)
    assert isinstance(cast(object, fast), FastTickV3)
    reference = decode_tick(value)
    assert fast.tick_id == reference.tick_id == tick.tick_id
    for name in Tick.model_fields:
        if name not in ("schema_version", "bids", "asks"):
            assert getattr(fast, name) == getattr(reference, name), name


def test_version_3_kinds_and_fields_are_refused_in_versions_1_and_2() -> None:
    fields = correction().model_dump(exclude={"schema_version"})
    with pytest.raises(ValueError, match="a trade_correction needs schema version 3"):
        Tick(**fields)
    with pytest.raises(ValueError, match="status_code: only in schema version 3"):
        trade(status_code="H")
    assert make_tick(**fields) == correction()  # the lowest version the kind allows
    assert make_tick(**trade().model_dump(exclude={"schema_version"})) == trade()
    with pytest.raises(ValueError, match="cannot be written as version 2"):
        encode_tick(correction(), 2)
    # A version-1 tick may be written as version 3 (a superset), and reads back the same.
    assert decode_tick(encode_tick(trade(), 3)).tick_id == trade().tick_id
    assert dict(kafka_headers("p", 3))["tickpipe-schema-version"] == b"3"


def test_identity_of_the_version_3_kinds() -> None:
    assert correction().tick_id == correction(received_ns=TS + 9).tick_id
    assert correction().tick_id != correction(corrected_price=187.27).tick_id
    assert correction().tick_id != correction(original_trade_id=43).tick_id
    assert trade_cancel().tick_id != trade_cancel(cancel_action="E").tick_id
    assert trade_cancel().tick_id != trade_cancel(trade_id=43).tick_id
    assert trading_status().tick_id != trading_status(status_code="T").tick_id
    assert luld().tick_id != luld(limit_up_price=196.62).tick_id
    ids = {make().tick_id for make in _V3_KINDS} | {trade().tick_id}
    assert len(ids) == 5, "a cancel is not the trade it cancels"


def _levels(levels: object) -> object:
    if levels is None:
        return None
    return [(lv.price, lv.size) for lv in levels]  # type: ignore[attr-defined]


def test_version_2_carries_the_identity_and_version_1_stays_as_it_was() -> None:
    tick = trade()
    v2 = json.loads(encode_tick(tick, 2))
    assert v2["schema_version"] == 2
    assert v2["tick_id"] == str(tick.tick_id)
    v1 = json.loads(encode_tick(tick))
    assert "tick_id" not in v1
    assert {k: v for k, v in v2.items() if k not in ("schema_version", "tick_id")} == {
        k: v for k, v in v1.items() if k != "schema_version"
    }
    assert dict(kafka_headers("p", 2))["tickpipe-schema-version"] == b"2"
    with pytest.raises(ValueError, match="no schema version 7"):
        encode_tick(tick, 7)


def test_identity_of_version_1_is_unchanged() -> None:
    # The ids stored by earlier builds: a changed hash would store every replay twice.
    assert str(trade().tick_id) == "017aa979-a9d5-9b07-09aa-f03304c82ecf"
    assert str(orderbook().tick_id) == "150ad595-e3b9-9090-b0c0-19979b2975f0"


def _fast_reason(value: bytes | None) -> RejectReason:
    with pytest.raises(TickRejected) as caught:
        decode_tick_fast(value)
    return caught.value.reason


def test_fast_decoder_refuses_what_the_reference_refuses_with_its_reason() -> None:
    good = encode_tick(trade())
    good2 = encode_tick(trade(), 2)
    v3 = encode_tick(correction())
    cases = [
        None,
        b"",
        b"{not json",
        b"[1, 2]",
        good.replace(b'"schema_version":1', b'"schema_version":4'),
        good.replace(b"187.25", b"NaN"),
        good.replace(b"187.25", b"1e999"),
        good.replace(b"187.25", b"-187.25"),
        good.replace(b'"kind":"trade"', b'"kind":"news"'),
        good.replace(b'"symbol"', b'"sym"'),
        good[:-1] + b',"extra":1}',
        good.replace(b'"trade_id":42', b'"trade_id":9223372036854775808'),
        good.replace(b'"price":187.25,', b""),  # a trade without its price
        good.replace(b'"exchange":"V"', b'"exchange":"' + b"V" * 900_000 + b'"'),
        good.replace(b'"ts":"2024-03-01T14:30:00.123456789Z"', b'"ts":"yesterday"'),
        good.replace(b'"ts":"2024-03-01T14:30:00.123456789Z"', b'"ts":true'),
        good2.replace(b'"schema_version":2', b'"schema_version":1'),  # v1 has no tick_id
        good.replace(b'"schema_version":1', b'"schema_version":2'),  # v2 needs one
        good2.replace(b'"tick_id":"', b'"tick_id":"x'),
        # version 3: its kinds and fields only there; no carried identity
        v3.replace(b'"schema_version":3', b'"schema_version":1'),
        v3.replace(b'"schema_version":3', b'"schema_version":2'),
        good[:-1] + b',"status_code":"H"}',
        v3[:-1] + b',"tick_id":"' + str(trade().tick_id).encode() + b'"}',
        v3.replace(b'"corrected_price":187.26,', b""),  # a correction without its price
        v3.replace(b'"corrected_size":100.0', b'"corrected_size":-1.0'),
        v3.replace(b'"tape":"C"', b'"tape":"' + b"C" * 9 + b'"'),
        # a version-3 kind or field needs its version said (without it, version 1)
        v3.replace(b'"schema_version":3,', b""),
        good.replace(b'"schema_version":1,', b"")[:-1] + b',"status_code":"H"}',
    ]
    for value in cases:
        assert _fast_reason(value) is _reason(value), value


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("symbol", RejectReason.SCHEMA_VIOLATION),
        ("exchange", RejectReason.SCHEMA_VIOLATION),
        ("tape", RejectReason.SCHEMA_VIOLATION),
    ],
)
def test_every_text_field_has_a_length_bound(field: str, reason: RejectReason) -> None:
    doc = json.loads(encode_tick(trade()))
    doc[field] = "X" * (TEXT_BOUNDS[field] + 1)
    value = json.dumps(doc).encode()
    assert _reason(value) is reason
    assert _fast_reason(value) is reason
    doc[field] = "X" * TEXT_BOUNDS[field]
    assert decode_tick_fast(json.dumps(doc).encode()).symbol


def test_bounds_cover_every_text_field() -> None:
    text_fields = {
        name
        for name, info in Tick.model_fields.items()
        if "str" in str(info.annotation) and "UUID" not in str(info.annotation)
    }
    # The condition lists of a correction are bounded like the trade's own ("conditions").
    assert text_fields - {"original_conditions", "corrected_conditions"} == set(TEXT_BOUNDS)
    for name in ("original_conditions", "corrected_conditions"):
        assert Tick.model_fields[name].annotation == Tick.model_fields["conditions"].annotation


def test_integers_beyond_bigint_and_timestamps_beyond_it_are_invalid_values() -> None:
    doc = json.loads(encode_tick(trade()))
    for field, value in (("trade_id", 2**63), ("received_at", 10**30), ("ts", 0)):
        bad = json.dumps({**doc, field: value}).encode()
        assert _reason(bad) is RejectReason.INVALID_VALUE, field
        assert _fast_reason(bad) is RejectReason.INVALID_VALUE, field


def test_a_wrong_carried_identity_is_caught_by_the_sampled_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = json.loads(encode_tick(trade(), 2))
    doc["tick_id"] = str(quote().tick_id)  # some other tick's identity
    value = json.dumps(doc).encode()
    monkeypatch.setattr(schema, "_verify_countdown", [1])  # the next one is checked
    with pytest.raises(TickRejected) as caught:
        decode_tick_fast(value)
    assert caught.value.reason is RejectReason.INVALID_VALUE
    assert "does not match" in caught.value.detail
    checked = 0
    for _ in range(schema.VERIFY_CARRIED_ID_EVERY * 2):
        try:
            decode_tick_fast(value)
        except TickRejected:
            checked += 1
    assert checked == 2


def test_fields_protocol_is_what_both_decoders_return() -> None:
    value = encode_tick(trade())
    results: list[TickFields] = [decode_tick(value), decode_tick_fast(value)]
    assert results[0].tick_id == results[1].tick_id
