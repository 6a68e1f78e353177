"""The real alpaca-py 0.44 client, unchanged, against the simulator (``url_override``).

Each test lets the client receive a fixed amount of data (SIM_MAX_EVENTS_PER_SYMBOL), stops
it, and then requires /stats to report exactly what the client's handlers received.
No Kafka or database is involved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect

from tickpipe_market_sim.testing import fetch_stats, http_get, running_sim

with warnings.catch_warnings():
    # alpaca-py 0.44 imports websockets.legacy, deprecated since websockets 14, when its
    # stream module is imported; not ours to fix, so ignored for this import alone.
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.live import CryptoDataStream, StockDataStream
    from alpaca.data.models import Bar, Orderbook, Quote, Trade

pytestmark = pytest.mark.timeout(60)

KIND_OF = {"t": "trade", "q": "quote", "b": "bar", "u": "updated_bar", "d": "daily_bar"}
KIND_OF["o"] = "orderbook"
N = 12
RATE = 60.0  # steps per second: N events take 0.2 s
BAR_INTERVAL = 0.1  # N trades at 60/s span two or three 0.1 s bar windows


@pytest.fixture(autouse=True)
def log_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Run the sim's log calls for real (a bad log field only fails when emitted)."""
    caplog.set_level(logging.DEBUG, logger="tickpipe_market_sim")


class Inbox:
    """The stream's handler: keeps every message and wakes whoever waits for more."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def receive(self, message: Any) -> None:
        self.messages.append(message)
        self._arrived.set()

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(15):
            while not predicate(self.messages):
                self._arrived.clear()
                await self._arrived.wait()


async def stop(stream: Any, task: asyncio.Task[None]) -> None:
    """stop_ws() alone only takes effect at alpaca-py's next receive (up to 5 s when the
    feed is quiet); closing the socket as well ends the stream at once."""
    await stream.stop_ws()
    await stream.close()
    await asyncio.wait_for(task, timeout=10)


async def stats_after_disconnect(sim: Any) -> dict[str, Any]:
    """/stats once the server has seen every client go (its counts are then final)."""
    async with asyncio.timeout(10):
        while True:
            stats = await fetch_stats(sim)
            if stats["connections"]["open"] == 0:
                return stats
            await asyncio.sleep(0.02)


def sent_by_handlers(messages: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """What the handlers got, in /stats' shape: symbol → kind → count."""
    out: dict[str, Counter[str]] = {}
    for m in messages:
        out.setdefault(m["S"], Counter())[KIND_OF[m["T"]]] += 1
    return {symbol: dict(sorted(kinds.items())) for symbol, kinds in out.items()}


def counts(messages: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((m["T"], m["S"]) for m in messages)


def test_stock_stream_gets_exactly_what_stats_reports() -> None:
    inbox = Inbox()
    received = inbox.messages
    on_message = inbox.receive

    expected = {
        ("t", "AAPL"): N,
        ("t", "MSFT"): N,
        ("q", "AAPL"): N,
    }

    def bar_trades(got: list[dict[str, Any]], symbol: str) -> int:
        return sum(m["n"] for m in got if m["T"] == "b" and m["S"] == symbol)

    def complete(got: list[dict[str, Any]]) -> bool:
        """Every capped trade arrived and is in a closed bar (the cap closes the last)."""
        have = counts(got)
        return all(have[k] >= n for k, n in expected.items()) and all(
            bar_trades(got, s) >= N for s in ("AAPL", "MSFT")
        )

    async def scenario() -> dict[str, Any]:
        async with running_sim(
            seed=1,
            rate_per_symbol=RATE,
            bar_interval=BAR_INTERVAL,
            max_events_per_symbol=N,
            trading="while_subscribed",
            stock_symbols=("AAPL", "MSFT", "TSLA"),
        ) as sim:
            stream = StockDataStream(
                "any-key", "any-secret", raw_data=True, url_override=sim.url("/v2/iex")
            )
            stream.subscribe_trades(on_message, "AAPL", "MSFT")
            stream.subscribe_quotes(on_message, "AAPL")
            stream.subscribe_bars(on_message, "AAPL", "MSFT")
            stream.subscribe_daily_bars(on_message, "AAPL")
            stream.subscribe_updated_bars(on_message, "*")
            task = asyncio.create_task(stream._run_forever())
            await inbox.wait_for(complete)
            # A late print revises a bar one step after it closed: let the last one arrive.
            await asyncio.sleep(5 / RATE)
            await stop(stream, task)
            return await stats_after_disconnect(sim)

    stats = asyncio.run(scenario())

    got = counts(received)
    assert {k: got[k] for k in expected} == expected
    # Bars are real time windows: one per 0.1 s interval in which the symbol traded, and
    # each holds exactly the trades stamped inside it.
    window_ns = round(BAR_INTERVAL * 1e9)
    for symbol in ("AAPL", "MSFT"):
        stamps = [m["t"].to_unix_nano() for m in received if m["T"] == "t" and m["S"] == symbol]
        closed = [m for m in received if m["T"] == "b" and m["S"] == symbol]
        assert [b["t"].to_unix_nano() for b in closed] == sorted(
            {t - t % window_ns for t in stamps}
        )
        for closed_bar in closed:
            start = closed_bar["t"].to_unix_nano()
            assert closed_bar["n"] == sum(1 for t in stamps if start <= t < start + window_ns)
    assert got[("d", "AAPL")] == got[("b", "AAPL")], "a daily bar follows each bar"
    assert got[("q", "MSFT")] == 0, "only what was subscribed"
    updates = [m for m in received if m["T"] == "u"]
    assert {m["S"] for m in updates} <= {"AAPL", "MSFT", "TSLA"}
    assert updates, "seed 1 revises some bars (and the content is seeded, so always)"

    # /stats agrees with the handlers, per symbol and kind, for the endpoint and the connection.
    assert stats["sent"] == {"/v2/iex": sent_by_handlers(received)}
    (connection,) = stats["per_connection"].values()
    assert connection["sent"] == sent_by_handlers(received)
    assert (connection["endpoint"], connection["encoding"]) == ("/v2/iex", "msgpack")
    assert connection["control_messages"] == 3  # connected, authenticated, subscription
    assert stats["totals"]["messages"] == len(received)
    assert stats["generated"]["/v2/iex"]["AAPL"]["trade"] == N

    for symbol in ("AAPL", "MSFT"):
        trades = [m for m in received if m["T"] == "t" and m["S"] == symbol]
        assert [m["i"] for m in trades] == list(range(1, N + 1))
    for message in received:
        assert isinstance(message["t"], msgpack.Timestamp)
        if message["T"] in ("t", "q"):
            assert message["t"].nanoseconds % 1000 != 0, "sub-microsecond digits survive"
        # alpaca-py's own models accept every message (as its non-raw mode would build them).
        parsed = {**message, "t": message["t"].to_datetime()}
        if message["T"] == "t":
            trade = Trade(message["S"], parsed)
            assert (trade.id, trade.price, trade.exchange) == (message["i"], message["p"], "V")
        elif message["T"] == "q":
            quote = Quote(message["S"], parsed)
            assert quote.bid_price < quote.ask_price
        else:
            bar = Bar(message["S"], parsed)
            assert bar.vwap is not None
            assert bar.low <= bar.vwap <= bar.high


def test_crypto_stream_with_order_books() -> None:
    inbox = Inbox()
    received = inbox.messages
    on_message = inbox.receive

    symbols = ("BTC/USD", "ETH/USD")
    expected = {("t", s): N for s in symbols} | {("o", s): N + 1 for s in symbols}
    expected[("q", "BTC/USD")] = N

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with running_sim(
            rate_per_symbol=RATE,
            bar_interval=BAR_INTERVAL,
            max_events_per_symbol=N,
            trading="while_subscribed",
        ) as sim:
            stream = CryptoDataStream(
                "any-key", "any-secret", raw_data=True, url_override=sim.url("/v1beta3/crypto/us")
            )
            stream.subscribe_trades(on_message, *symbols)
            stream.subscribe_quotes(on_message, "BTC/USD")
            stream.subscribe_orderbooks(on_message, *symbols)
            task = asyncio.create_task(stream._run_forever())
            await inbox.wait_for(lambda got: all(counts(got)[k] >= n for k, n in expected.items()))
            await asyncio.sleep(3 / RATE)
            await stop(stream, task)
            stats = await stats_after_disconnect(sim)
            # A newcomer's full book must equal the book the first client rebuilt.
            async with connect(sim.url("/v1beta3/crypto/us")) as ws:
                await ws.recv()
                await ws.send('{"action":"auth","key":"k","secret":"s"}')
                await ws.recv()
                await ws.send('{"action":"subscribe","orderbooks":["BTC/USD"]}')
                await ws.recv()
                snapshot = json.loads(await ws.recv())
            return stats, snapshot

    stats, snapshot = asyncio.run(scenario())

    assert dict(counts(received)) == expected
    assert stats["sent"] == {"/v1beta3/crypto/us": sent_by_handlers(received)}
    for symbol in symbols:
        trades = [m for m in received if m["T"] == "t" and m["S"] == symbol]
        assert [m["i"] for m in trades] == list(range(1, N + 1))
        for trade in trades:
            assert trade["tks"] in ("B", "S")
            assert isinstance(trade["s"], float)
            assert Trade(symbol, {**trade, "t": trade["t"].to_datetime()}).price == trade["p"]
        books = [m for m in received if m["T"] == "o" and m["S"] == symbol]
        assert [m["r"] for m in books] == [True] + [False] * N, "full book first, then deltas"
        for book in books:
            Orderbook(symbol, {**book, "t": book["t"].to_datetime()})

    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for book in (m for m in received if m["T"] == "o" and m["S"] == "BTC/USD"):
        for side, levels in ((bids, book["b"]), (asks, book["a"])):
            for level in levels:
                if level["s"] == 0:
                    side.pop(level["p"])
                else:
                    side[level["p"]] = level["s"]
    assert snapshot[0]["r"] is True
    assert {lv["p"]: lv["s"] for lv in snapshot[0]["b"]} == bids
    assert {lv["p"]: lv["s"] for lv in snapshot[0]["a"]} == asks


def test_wrong_credentials_reach_alpaca_py_as_auth_failed() -> None:
    inbox = Inbox()
    received = inbox.messages
    on_message = inbox.receive

    async def scenario() -> str:
        async with running_sim(api_key="right-key", api_secret="right-secret") as sim:  # noqa: S106
            stream = StockDataStream(
                "right-key", "wrong-secret", raw_data=True, url_override=sim.url("/v2/iex")
            )
            stream.subscribe_trades(on_message, "AAPL")
            task = asyncio.create_task(stream._run_forever())

            async with asyncio.timeout(10):
                while True:
                    _, _, body = await http_get(sim.port, "/metrics")
                    if b'tickpipe_sim_protocol_errors_total{code="402"} 1.0' in body:
                        break
                    await asyncio.sleep(0.05)
            # alpaca-py now backs off before retrying; stop_ws() ends that wait at once.
            await stream.stop_ws()
            await asyncio.wait_for(task, timeout=10)
            return str((await fetch_stats(sim))["sent"])

    sent = asyncio.run(scenario())
    assert received == []
    assert sent == "{}", "nothing was sent to an unauthenticated client"
