"""Alpaca stream messages (raw dicts) → the shared ``Tick``.

alpaca-py's parsed models hold timestamps as ``datetime``, which drops the nanoseconds, so
the producers subscribe with ``raw_data=True`` and read the wire values here: with msgpack
(what alpaca-py negotiates) ``t`` is a ``msgpack.Timestamp`` holding every nanosecond.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgpack
from pydantic import ValidationError

from tickpipe_common.schema import AssetClass, BookLevel, Tick, TickKind
from tickpipe_common.timestamps import NANOS_PER_SECOND, parse_rfc3339_ns

_KIND_BY_TYPE = {
    "t": TickKind.TRADE,
    "q": TickKind.QUOTE,
    "b": TickKind.BAR,
    "u": TickKind.UPDATED_BAR,
    "d": TickKind.DAILY_BAR,
    "o": TickKind.ORDERBOOK,
}


class MalformedMessage(ValueError):
    """A stream message we cannot turn into a tick; counted and logged, never fatal."""


def epoch_ns(value: Any) -> int:
    if isinstance(value, msgpack.Timestamp):
        return int(value.to_unix_nano())
    if isinstance(value, str):
        return parse_rfc3339_ns(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise MalformedMessage("naive datetime timestamp")
        whole = int(value.timestamp())
        return whole * NANOS_PER_SECOND + value.microsecond * 1000
    raise MalformedMessage(f"unsupported timestamp type {type(value).__name__}")


def _levels(raw: Any) -> tuple[BookLevel, ...]:
    if not isinstance(raw, list):
        raise MalformedMessage("orderbook side is not a list")
    return tuple(BookLevel(price=level["p"], size=level["s"]) for level in raw)


def _conditions(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    return tuple(str(c) for c in raw)


def _kind_fields(kind: TickKind, msg: Mapping[str, Any]) -> dict[str, Any]:
    get = msg.get
    if kind is TickKind.TRADE:
        return {
            "price": msg["p"],
            "size": msg["s"],
            "exchange": get("x"),
            "trade_id": get("i"),
            "conditions": _conditions(get("c")),
            "tape": get("z"),
            "taker_side": get("tks"),
        }
    if kind is TickKind.QUOTE:
        return {
            "bid_price": msg["bp"],
            "bid_size": msg["bs"],
            "bid_exchange": get("bx"),
            "ask_price": msg["ap"],
            "ask_size": msg["as"],
            "ask_exchange": get("ax"),
            "conditions": _conditions(get("c")),
            "tape": get("z"),
        }
    if kind is TickKind.ORDERBOOK:
        return {"bids": _levels(msg["b"]), "asks": _levels(msg["a"]), "reset": bool(get("r"))}
    return {
        "open": msg["o"],
        "high": msg["h"],
        "low": msg["l"],
        "close": msg["c"],
        "volume": msg["v"],
        "vwap": get("vw"),
        "trade_count": get("n"),
    }


def normalise(msg: Mapping[str, Any], asset_class: AssetClass, feed: str, received_ns: int) -> Tick:
    """One raw stream message → a ``Tick``, or ``MalformedMessage`` saying what was wrong."""
    kind = _KIND_BY_TYPE.get(str(msg.get("T")))
    if kind is None:
        raise MalformedMessage(f"not a market-data message type: {msg.get('T')!r}")
    try:
        return Tick(
            kind=kind,
            asset_class=asset_class,
            symbol=msg["S"],
            ts_ns=epoch_ns(msg["t"]),
            received_ns=received_ns,
            feed=feed,
            **_kind_fields(kind, msg),
        )
    except KeyError as exc:
        raise MalformedMessage(f"{kind.value} without field {exc.args[0]!r}") from None
    except (ValidationError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"{kind.value}: {exc}".splitlines()[0][:300]) from None
