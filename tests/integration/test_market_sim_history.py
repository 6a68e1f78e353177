"""alpaca-py's historical clients, unchanged, against the simulator (``url_override``).

A WebSocket client watches the market live; afterwards StockHistoricalDataClient and
CryptoHistoricalDataClient fetch the same stretch from the REST API, raw (nanoseconds
intact) and parsed, and must get exactly what was streamed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alpaca.data.enums import DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import (
    CryptoBarsRequest,
    CryptoTradesRequest,
    StockBarsRequest,
    StockQuotesRequest,
    StockTradesRequest,
)
from alpaca.data.timeframe import TimeFrame

from tests.integration.sim_client import collect, request, session
from tickpipe_common.timestamps import ns_to_datetime, parse_rfc3339_ns
from tickpipe_market_sim.server import SimServer
from tickpipe_market_sim.testing import fetch_stats, http_get, running_sim

pytestmark = pytest.mark.timeout(90)

KEY, SECRET = "hist-key", "hist-secret"


def _base(sim: SimServer) -> str:
    return f"http://127.0.0.1:{sim.port}"


async def _bars_recorded(sim: SimServer, path: str) -> None:
    """Until the history holds a closed bar of ``path`` (bars close every SIM_BAR_INTERVAL)."""
    while True:
        kept = (await fetch_stats(sim))["history"]["kept"].get(path, {})
        # Every symbol steps together, so the first close gives each symbol a bar.
        if kept.get("bar", {}).get("events", 0) >= 5:
            return
        await asyncio.sleep(0.05)


async def _watch(sim: SimServer, path: str, subscribe: dict[str, Any], n: int) -> list[Any]:
    async with session(sim, path, {"action": "auth", "key": KEY, "secret": SECRET}) as ws:
        await request(ws, {"action": "subscribe", **subscribe})
        return await collect(ws, n)


def test_stock_history_is_what_was_streamed() -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any], Any, dict[str, Any], Any]:
        async with running_sim(
            rate_per_symbol=100, bar_interval=0.5, api_key=KEY, api_secret=SECRET
        ) as sim:
            live = await _watch(sim, "/v2/iex", {"trades": ["AAPL", "MSFT"]}, 120)
            # Trade subscribers get the trades' corrections and cancel/errors too.
            live = [m for m in live if m["T"] == "t"]
            client = StockHistoricalDataClient(KEY, SECRET, raw_data=True, url_override=_base(sim))
            parsed_client = StockHistoricalDataClient(KEY, SECRET, url_override=_base(sim))
            first, last = parse_rfc3339_ns(live[0]["t"]), parse_rfc3339_ns(live[-1]["t"])
            trades = StockTradesRequest(
                symbol_or_symbols=["AAPL", "MSFT"],
                start=ns_to_datetime(first - first % 1000),  # datetime has microseconds
                end=ns_to_datetime(last - last % 1000 + 1000),
                feed=DataFeed.IEX,
            )
            raw: Any = await asyncio.to_thread(client.get_stock_trades, trades)
            parsed = await asyncio.to_thread(parsed_client.get_stock_trades, trades)
            since = datetime.now(UTC) - timedelta(minutes=5)
            bars = StockBarsRequest(
                symbol_or_symbols="AAPL", timeframe=TimeFrame.Minute, start=since
            )
            await asyncio.wait_for(_bars_recorded(sim, "/v2/iex"), 20)
            raw_bars: Any = await asyncio.to_thread(client.get_stock_bars, bars)
            quotes = StockQuotesRequest(symbol_or_symbols="NVDA", start=since, limit=10)
            parsed_quotes = await asyncio.to_thread(parsed_client.get_stock_quotes, quotes)
            return live, raw, parsed, raw_bars, parsed_quotes

    live, raw, parsed, raw_bars, parsed_quotes = asyncio.run(scenario())
    first, last = parse_rfc3339_ns(live[0]["t"]), parse_rfc3339_ns(live[-1]["t"])
    for symbol in ("AAPL", "MSFT"):
        streamed = [{k: v for k, v in m.items() if k not in ("T", "S")} for m in live]
        streamed = [m for m, w in zip(streamed, live, strict=True) if w["S"] == symbol]
        # By value, not by text: the stream writes nine fractional digits, the REST API trims
        # trailing zeros (as Alpaca's Go servers do), so the texts of one instant can differ.
        fetched = [t for t in raw[symbol] if first <= parse_rfc3339_ns(t["t"]) <= last]
        assert streamed, symbol
        # Same trades, same fields, same nanoseconds (Go-style text: trailing zeros trimmed).
        assert [parse_rfc3339_ns(t["t"]) for t in fetched] == [
            parse_rfc3339_ns(m["t"]) for m in streamed
        ]
        assert [{**t, "t": None} for t in fetched] == [{**m, "t": None} for m in streamed]
        ids = [t.id for t in parsed[symbol]]
        assert ids == [t["i"] for t in raw[symbol]], "the parsed TradeSet holds the same trades"
    (bar, *_) = raw_bars["AAPL"]
    assert {"t", "o", "h", "l", "c", "v", "n", "vw"} <= set(bar)
    assert bar["t"].endswith(":00Z"), "1Min bars start on the minute"
    assert len(parsed_quotes["NVDA"]) == 10, "a quote the simulator made though nobody watched"


def test_crypto_history_without_keys_and_with_bars() -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any], Any]:
        async with running_sim(rate_per_symbol=100, bar_interval=0.5) as sim:
            live = await _watch(sim, "/v1beta3/crypto/us", {"trades": ["BTC/USD"]}, 40)
            await asyncio.wait_for(_bars_recorded(sim, "/v1beta3/crypto/us"), 20)
            client = CryptoHistoricalDataClient(raw_data=True, url_override=_base(sim))
            since = datetime.now(UTC) - timedelta(minutes=5)
            raw: Any = await asyncio.to_thread(
                client.get_crypto_trades,
                CryptoTradesRequest(symbol_or_symbols=["BTC/USD", "ETH/USD"], start=since),
            )
            bars = await asyncio.to_thread(
                CryptoHistoricalDataClient(url_override=_base(sim)).get_crypto_bars,
                CryptoBarsRequest(symbol_or_symbols="ETH/USD", timeframe=TimeFrame.Minute),
            )
            return live, raw, bars

    live, raw, bars = asyncio.run(scenario())
    by_id = {t["i"]: t for t in raw["BTC/USD"]}
    for message in live:
        fetched = by_id[message["i"]]
        assert parse_rfc3339_ns(fetched["t"]) == parse_rfc3339_ns(message["t"])
        assert (fetched["p"], fetched["s"], fetched["tks"]) == (
            message["p"],
            message["s"],
            message["tks"],
        )
    assert raw["ETH/USD"], "ETH/USD traded though nobody subscribed to it"
    assert bars["ETH/USD"][0].volume > 0


def test_rate_limit_headers_and_429() -> None:
    async def scenario() -> list[tuple[int, str]]:
        async with running_sim(history_rate_limit=2) as sim:
            out = []
            for _ in range(3):
                status, _, body = await http_get(
                    sim.port, "/v1beta3/crypto/us/trades?symbols=BTC/USD"
                )
                out.append((status, json.loads(body).get("message", "")))
            return out

    assert asyncio.run(scenario()) == [(200, ""), (200, ""), (429, "too many requests.")]
