"""Alpaca's market-data stream protocol: channel names, error table, control messages.

Everything a client can see on the wire that is not market data lives here, so the error
codes and their texts exist once and the tests can check them against this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Literal

# Wire message: what the server sends inside the top-level array of a frame.
Message = dict[str, Any]


class ErrorCode(IntEnum):
    INVALID_SYNTAX = 400
    NOT_AUTHENTICATED = 401
    AUTH_FAILED = 402
    ALREADY_AUTHENTICATED = 403
    AUTH_TIMEOUT = 404
    SYMBOL_LIMIT_EXCEEDED = 405
    CONNECTION_LIMIT_EXCEEDED = 406
    SLOW_CLIENT = 407
    INSUFFICIENT_SUBSCRIPTION = 409
    INVALID_SUBSCRIBE_ACTION = 410
    INTERNAL_ERROR = 500


# The texts Alpaca documents for its market-data streams; clients (alpaca-py included)
# surface `msg` to the user and some match on it, so they are kept verbatim.
ERROR_MESSAGES: Mapping[ErrorCode, str] = {
    ErrorCode.INVALID_SYNTAX: "invalid syntax",
    ErrorCode.NOT_AUTHENTICATED: "not authenticated",
    ErrorCode.AUTH_FAILED: "auth failed",
    ErrorCode.ALREADY_AUTHENTICATED: "already authenticated",
    ErrorCode.AUTH_TIMEOUT: "auth timeout",
    ErrorCode.SYMBOL_LIMIT_EXCEEDED: "symbol limit exceeded",
    ErrorCode.CONNECTION_LIMIT_EXCEEDED: "connection limit exceeded",
    ErrorCode.SLOW_CLIENT: "slow client",
    ErrorCode.INSUFFICIENT_SUBSCRIPTION: "insufficient subscription",
    ErrorCode.INVALID_SUBSCRIBE_ACTION: "invalid subscribe action for this feed",
    ErrorCode.INTERNAL_ERROR: "internal error",
}


class ProtocolError(Exception):
    """A client mistake answered with Alpaca's ``{"T":"error"}`` message."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(f"{int(code)} {ERROR_MESSAGES[code]}")
        self.code = code


class Kind(StrEnum):
    """Market-data kinds, as counted in /stats and metrics (never a wire name)."""

    TRADE = "trade"
    QUOTE = "quote"
    BAR = "bar"
    UPDATED_BAR = "updated_bar"
    DAILY_BAR = "daily_bar"
    ORDERBOOK = "orderbook"
    # stocks only
    TRADE_CORRECTION = "trade_correction"
    TRADE_CANCEL = "trade_cancel"
    TRADING_STATUS = "trading_status"
    LULD = "luld"


# Each kind's `T` value and the subscription channel that carries it.
WIRE_TYPE: Mapping[Kind, str] = {
    Kind.TRADE: "t",
    Kind.QUOTE: "q",
    Kind.BAR: "b",
    Kind.UPDATED_BAR: "u",
    Kind.DAILY_BAR: "d",
    Kind.ORDERBOOK: "o",
    Kind.TRADE_CORRECTION: "c",
    Kind.TRADE_CANCEL: "x",
    Kind.TRADING_STATUS: "s",
    Kind.LULD: "l",
}
CHANNEL_OF: Mapping[Kind, str] = {
    Kind.TRADE: "trades",
    Kind.QUOTE: "quotes",
    Kind.BAR: "bars",
    Kind.UPDATED_BAR: "updatedBars",
    Kind.DAILY_BAR: "dailyBars",
    Kind.ORDERBOOK: "orderbooks",
    # Alpaca sends corrections and cancel/errors to every trade subscriber.
    Kind.TRADE_CORRECTION: "trades",
    Kind.TRADE_CANCEL: "trades",
    Kind.TRADING_STATUS: "statuses",
    Kind.LULD: "lulds",
}
BAR_KINDS = frozenset({Kind.BAR, Kind.UPDATED_BAR, Kind.DAILY_BAR})
# The kinds only the stock feeds have.
STOCK_ONLY_KINDS = frozenset(
    {Kind.TRADE_CORRECTION, Kind.TRADE_CANCEL, Kind.TRADING_STATUS, Kind.LULD}
)

WILDCARD = "*"

# Channels a client may subscribe to, per asset class.
STOCK_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
CRYPTO_CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")

# Every channel key Alpaca documents for its market-data streams (stocks, crypto, options,
# news). Clients such as the Go SDK send all of their keys in every request, most with an
# empty list or null; a key valid elsewhere but not on this feed is then no error, as on
# Alpaca's servers: only naming symbols on it is (410).
DOCUMENTED_CHANNELS = frozenset(
    {
        "trades",
        "quotes",
        "bars",
        "updatedBars",
        "dailyBars",
        "statuses",
        "lulds",
        "imbalances",
        "corrections",
        "cancelErrors",
        "orderbooks",
        "news",
        "pricing",
    }
)

# Keys of the stock subscription reply that are not subscribable themselves: Alpaca
# subscribes corrections and cancel-errors together with trades and reports them so.
STOCK_MIRRORED_CHANNELS: Mapping[str, str] = {"corrections": "trades", "cancelErrors": "trades"}

# Channels whose symbol count SIM_SYMBOL_LIMIT bounds; bars and statuses are unlimited,
# as on Alpaca's basic plan ("30 channels at a time for trades and quotes").
LIMITED_CHANNELS = frozenset({"trades", "quotes", "orderbooks"})

MAX_SYMBOL_LENGTH = 32


def connected() -> Message:
    return {"T": "success", "msg": "connected"}


def authenticated() -> Message:
    return {"T": "success", "msg": "authenticated"}


def error(code: ErrorCode) -> Message:
    return {"T": "error", "code": int(code), "msg": ERROR_MESSAGES[code]}


def subscription(reply: Mapping[str, list[str]]) -> Message:
    return {"T": "subscription", **reply}


@dataclass(frozen=True)
class AuthRequest:
    key: str
    secret: str


@dataclass(frozen=True)
class SubscriptionRequest:
    action: Literal["subscribe", "unsubscribe"]
    # Channel name → symbols, exactly as the client sent them (unknown channels included;
    # whether a channel exists is the feed's business, see Subscriptions.apply).
    channels: Mapping[str, tuple[str, ...]]


ClientRequest = AuthRequest | SubscriptionRequest


def parse_request(obj: object) -> ClientRequest:
    """Validate one decoded client message; malformed input is a 400, never an exception."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_SYNTAX)
    action = obj.get("action")
    if action == "auth":
        key, secret = obj.get("key"), obj.get("secret")
        if not isinstance(key, str) or not isinstance(secret, str):
            raise ProtocolError(ErrorCode.INVALID_SYNTAX)
        return AuthRequest(key=key, secret=secret)
    if action in ("subscribe", "unsubscribe"):
        channels: dict[str, tuple[str, ...]] = {}
        for name, given in obj.items():
            if name == "action":
                continue
            # "trades": null means no symbols, as an empty list does.
            symbols = () if given is None else given
            if not isinstance(name, str) or not isinstance(symbols, list | tuple):
                raise ProtocolError(ErrorCode.INVALID_SYNTAX)
            if not all(_valid_symbol(s) for s in symbols):
                raise ProtocolError(ErrorCode.INVALID_SYNTAX)
            channels[name] = tuple(symbols)
        return SubscriptionRequest(action=action, channels=channels)
    raise ProtocolError(ErrorCode.INVALID_SYNTAX)


def _valid_symbol(symbol: object) -> bool:
    return (
        isinstance(symbol, str)
        and 0 < len(symbol) <= MAX_SYMBOL_LENGTH
        and not any(ch.isspace() for ch in symbol)
    )
