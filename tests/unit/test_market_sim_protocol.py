"""Alpaca's protocol rules: the error table, request parsing, subscription sets, auth."""

from __future__ import annotations

import pytest

from tickpipe_market_sim.auth import Authenticator
from tickpipe_market_sim.protocol import (
    ERROR_MESSAGES,
    AuthRequest,
    ErrorCode,
    ProtocolError,
    SubscriptionRequest,
    error,
    parse_request,
    subscription,
)
from tickpipe_market_sim.subscriptions import Subscriptions
from tickpipe_market_sim.universe import build_feeds

FEEDS = build_feeds(("AAPL", "MSFT"), ("BTC/USD",))
STOCK_REPLY_KEYS = [
    "trades",
    "quotes",
    "bars",
    "updatedBars",
    "dailyBars",
    "statuses",
    "lulds",
    "corrections",
    "cancelErrors",
]
CRYPTO_REPLY_KEYS = ["trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars"]


def stock_subs() -> Subscriptions:
    feed = FEEDS["/v2/iex"]
    return Subscriptions(feed.channels, feed.mirrored_channels)


def crypto_subs() -> Subscriptions:
    feed = FEEDS["/v1beta3/crypto/us"]
    return Subscriptions(feed.channels, feed.mirrored_channels)


def sub(**channels: list[str]) -> SubscriptionRequest:
    return SubscriptionRequest("subscribe", {k: tuple(v) for k, v in channels.items()})


def unsub(**channels: list[str]) -> SubscriptionRequest:
    return SubscriptionRequest("unsubscribe", {k: tuple(v) for k, v in channels.items()})


def code_of(excinfo: pytest.ExceptionInfo[ProtocolError]) -> int:
    return int(excinfo.value.code)


def test_error_table_is_alpacas() -> None:
    assert {int(code): text for code, text in ERROR_MESSAGES.items()} == {
        400: "invalid syntax",
        401: "not authenticated",
        402: "auth failed",
        403: "already authenticated",
        404: "auth timeout",
        405: "symbol limit exceeded",
        406: "connection limit exceeded",
        407: "slow client",
        409: "insufficient subscription",
        410: "invalid subscribe action for this feed",
        500: "internal error",
    }
    assert error(ErrorCode.AUTH_TIMEOUT) == {"T": "error", "code": 404, "msg": "auth timeout"}
    assert subscription({"trades": ["AAPL"]}) == {"T": "subscription", "trades": ["AAPL"]}


def test_parse_auth() -> None:
    request = parse_request({"action": "auth", "key": "k", "secret": "s"})
    assert request == AuthRequest(key="k", secret="s")  # noqa: S106 - test data


@pytest.mark.parametrize(
    "message",
    [
        [{"action": "auth", "key": "k", "secret": "s"}],  # an array, not an object
        "auth",
        {"key": "k", "secret": "s"},  # no action
        {"action": "listen"},
        {"action": "auth", "key": "k"},
        {"action": "auth", "key": 1, "secret": "s"},
        {"action": "subscribe", "trades": "AAPL"},  # not a list
        {"action": "subscribe", "trades": [""]},
        {"action": "subscribe", "trades": ["AA PL"]},
        {"action": "subscribe", "trades": [42]},
        {"action": "subscribe", "trades": ["X" * 33]},
    ],
)
def test_malformed_requests_are_invalid_syntax(message: object) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        parse_request(message)
    assert code_of(excinfo) == 400


def test_parse_subscribe_keeps_channels_as_sent() -> None:
    request = parse_request({"action": "unsubscribe", "trades": ["AAPL"], "whatever": []})
    assert request == SubscriptionRequest("unsubscribe", {"trades": ("AAPL",), "whatever": ()})


def test_null_symbol_lists_are_empty_ones() -> None:
    request = parse_request({"action": "subscribe", "trades": ["AAPL"], "quotes": None})
    assert request == SubscriptionRequest("subscribe", {"trades": ("AAPL",), "quotes": ()})


ALL_DOCUMENTED = (
    *("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds"),
    *("imbalances", "corrections", "cancelErrors", "orderbooks", "news", "pricing"),
)


@pytest.mark.parametrize("empty", [[], None])
def test_every_documented_channel_key_is_tolerated(empty: list[str] | None) -> None:
    """As the Go SDK sends them: every key, most empty or null; the feed's own channels
    apply, the others are ignored, and corrections/cancelErrors follow trades."""
    for subs, symbol, own in (
        (stock_subs(), "AAPL", "bars"),
        (crypto_subs(), "BTC/USD", "orderbooks"),
    ):
        message: dict[str, object] = dict.fromkeys(ALL_DOCUMENTED, empty)
        message.update(action="subscribe", trades=[symbol])
        message[own] = [symbol]
        if own == "bars":
            message["corrections"] = [symbol]  # stock only: it follows trades
        change = subs.apply(parse_request(message))  # type: ignore[arg-type]
        assert set(change.added) == {("trades", symbol), (own, symbol)}


def test_reply_lists_every_channel_of_the_feed() -> None:
    assert list(stock_subs().reply()) == STOCK_REPLY_KEYS
    assert list(crypto_subs().reply()) == CRYPTO_REPLY_KEYS
    assert all(v == [] for v in stock_subs().reply().values())


def test_subscribe_accumulates_and_unsubscribe_removes() -> None:
    subs = stock_subs()
    first = subs.apply(sub(trades=["AAPL", "MSFT"], quotes=["AAPL"]))
    assert first.added == (("trades", "AAPL"), ("trades", "MSFT"), ("quotes", "AAPL"))
    again = subs.apply(sub(trades=["AAPL", "TSLA"]))
    assert again.added == (("trades", "TSLA"),), "already subscribed symbols are not re-added"
    reply = subs.reply()
    assert reply["trades"] == ["AAPL", "MSFT", "TSLA"]
    # Alpaca reports corrections and cancel errors for every trade subscription.
    assert reply["corrections"] == reply["cancelErrors"] == reply["trades"]
    change = subs.apply(unsub(trades=["MSFT", "NOPE"], quotes=["AAPL"]))
    assert change.removed == (("trades", "MSFT"), ("quotes", "AAPL"))
    assert change.added == ()
    assert subs.reply()["trades"] == ["AAPL", "TSLA"]
    assert subs.reply()["quotes"] == []


def test_wildcard_covers_every_symbol() -> None:
    subs = stock_subs()
    subs.apply(sub(bars=["*"], trades=["AAPL"]))
    assert subs.covers("bars", "ANYTHING")
    assert subs.covers("trades", "AAPL")
    assert not subs.covers("trades", "MSFT")
    subs.apply(unsub(bars=["*"]))
    assert not subs.covers("bars", "ANYTHING")


def test_unknown_channel_is_410_and_changes_nothing() -> None:
    subs = stock_subs()
    subs.apply(sub(trades=["AAPL"]))
    for request in (sub(orderbooks=["AAPL"]), sub(trades=["MSFT"], news=["*"])):
        with pytest.raises(ProtocolError) as excinfo:
            subs.apply(request)
        assert code_of(excinfo) == 410
    with pytest.raises(ProtocolError) as excinfo:
        crypto_subs().apply(sub(statuses=["BTC/USD"]))
    assert code_of(excinfo) == 410
    assert subs.reply()["trades"] == ["AAPL"]


def test_symbol_limit_is_per_limited_channel_and_atomic() -> None:
    subs = stock_subs()
    subs.apply(sub(trades=["AAPL", "MSFT"], quotes=["AAPL", "MSFT"]), symbol_limit=2)
    # Bars are not limited (Alpaca's basic plan limits trades and quotes only).
    subs.apply(sub(bars=["A", "B", "C", "D"]), symbol_limit=2)
    with pytest.raises(ProtocolError) as excinfo:
        subs.apply(sub(trades=["TSLA"], bars=["E"]), symbol_limit=2)
    assert code_of(excinfo) == 405
    reply = subs.reply()
    assert reply["trades"] == ["AAPL", "MSFT"]
    assert reply["bars"] == ["A", "B", "C", "D"], "a refused request changes nothing"
    # Making room first is fine, and "*" counts as one symbol.
    subs.apply(unsub(trades=["MSFT"]), symbol_limit=2)
    subs.apply(sub(trades=["*"]), symbol_limit=2)
    assert subs.reply()["trades"] == ["AAPL", "*"]


def test_clear_removes_everything() -> None:
    subs = crypto_subs()
    subs.apply(sub(orderbooks=["BTC/USD"], trades=["*"]))
    assert set(subs.clear().removed) == {("orderbooks", "BTC/USD"), ("trades", "*")}
    assert all(v == [] for v in subs.reply().values())


def test_any_credentials_by_default() -> None:
    auth = Authenticator()
    auth.admit("any", "thing", "/v2/iex")
    auth.admit("any", "thing", "/v2/iex")


def test_configured_credentials_must_match() -> None:
    auth = Authenticator("key", "secret")
    for key, secret in (("key", "wrong"), ("wrong", "secret"), ("", "")):
        with pytest.raises(ProtocolError) as excinfo:
            auth.admit(key, secret, "/v2/iex")
        assert code_of(excinfo) == 402
    auth.admit("key", "secret", "/v2/iex")


def test_connection_limit_is_per_key_and_endpoint() -> None:
    auth = Authenticator(max_connections=1)
    auth.admit("k", "s", "/v2/iex")
    with pytest.raises(ProtocolError) as excinfo:
        auth.admit("k", "s", "/v2/iex")
    assert code_of(excinfo) == 406
    auth.admit("k", "s", "/v1beta3/crypto/us")  # another endpoint
    auth.admit("other", "s", "/v2/iex")  # another key
    auth.release("k", "/v2/iex")
    auth.admit("k", "s", "/v2/iex")  # the slot is free again


def test_feeds_and_universes() -> None:
    assert sorted(FEEDS) == [
        "/v1beta3/crypto/us",
        "/v2/delayed_sip",
        "/v2/iex",
        "/v2/sip",
        "/v2/test",
    ]
    test_feed = FEEDS["/v2/test"]
    assert test_feed.universe == ("FAKEPACA",)
    assert test_feed.carries("FAKEPACA")
    assert not test_feed.carries("AAPL")
    assert FEEDS["/v2/sip"].carries("ANYTHING")
    assert FEEDS["/v2/sip"].universe == ("AAPL", "MSFT")
