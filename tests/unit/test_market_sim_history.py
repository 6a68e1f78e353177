"""What happened, kept and served: the history's bounds and Alpaca's historical REST API."""

from __future__ import annotations

import base64
import http
import itertools
import json
from typing import Any

import pytest

from tickpipe_common.timestamps import parse_rfc3339_ns
from tickpipe_market_sim.auth import Authenticator
from tickpipe_market_sim.clock import EventClock
from tickpipe_market_sim.historical import HistoricalApi, RateLimiter, go_rfc3339
from tickpipe_market_sim.history import History, HistoryBounds, Series
from tickpipe_market_sim.market import Event, SymbolMarket
from tickpipe_market_sim.protocol import Kind
from tickpipe_market_sim.universe import IEX_VENUES, AssetClass, profile_for

START_NS = 1_700_000_000_000_000_000
SECOND = 10**9
KEYS = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}


def test_series_forgets_by_age_and_by_count_and_compacts() -> None:
    series = Series()
    for t in range(10_000):
        series.append(t, {"t": t})
        series.forget(older_than_ns=t - 6000, keep=5000)
    assert len(series) == 5000
    assert series.oldest() == 5000
    assert len(series.times) < 10_000, "forgotten entries are compacted away"
    assert series.between(7000, 7002) == (
        series.times.index(7000),
        series.times.index(7002) + 1,
    )
    series.forget(older_than_ns=9990, keep=0)
    assert series.oldest() == 9990


class Market:
    """One stock and one crypto market on a fake clock, recorded into a History."""

    def __init__(self, steps: int, bound: HistoryBounds | None = None) -> None:
        self.clock = EventClock(itertools.count(START_NS, 250_000_017).__next__)
        self.history = History(bound or HistoryBounds(3600, 0), lambda: START_NS + 10**12)
        self.events: list[tuple[str, Event]] = []
        for path, symbol, asset in (
            ("/v2/iex", "AAPL", AssetClass.STOCK),
            ("/v2/iex", "MSFT", AssetClass.STOCK),
            ("/v1beta3/crypto/us", "BTC/USD", AssetClass.CRYPTO),
        ):
            market = SymbolMarket(
                profile=profile_for(symbol, asset),
                venues=IEX_VENUES,
                seed=3,
                clock=self.clock,
                steps_per_bar=4,
                bar_interval_ns=SECOND,
                max_events=0,
            )
            wanted = frozenset(Kind) - {Kind.ORDERBOOK}
            for _ in range(steps):
                for event in market.advance(wanted):
                    self.history.record(path, event)
                    self.events.append((path, event))

    def api(self, auth: Authenticator | None = None, limiter: RateLimiter | None = None) -> Any:
        api = HistoricalApi(
            self.history,
            auth or Authenticator(),
            bar_interval_ns=SECOND,
            rate_limiter=limiter or RateLimiter(0),
            now_ns=lambda: START_NS + 10**12,
        )

        def get(
            target: str, headers: dict[str, str] | None = None
        ) -> tuple[int, Any, dict[str, str]]:
            status, _, body, extra = api.handle(target, KEYS if headers is None else headers)
            return int(status), json.loads(body), dict(extra)

        return get

    def wire(self, path: str, kind: Kind, symbol: str) -> list[dict[str, Any]]:
        return [
            e.body for p, e in self.events if p == path and e.kind is kind and e.symbol == symbol
        ]


START = "2023-11-14T22:13:20Z"  # START_NS


def test_trades_in_alpacas_shape_with_nanoseconds() -> None:
    market = Market(40)
    get = market.api()
    status, body, _ = get(f"/v2/stocks/trades?symbols=MSFT,AAPL&start={START}&feed=iex")
    assert status == 200
    assert body["next_page_token"] is None
    assert list(body["trades"]) == ["AAPL", "MSFT"], "symbols in name order"
    wire = market.wire("/v2/iex", Kind.TRADE, "AAPL")
    got = body["trades"]["AAPL"]
    assert len(got) == len(wire) == 40
    assert set(got[0]) == {"t", "x", "p", "s", "c", "i", "z"}
    assert [parse_rfc3339_ns(t["t"]) for t in got] == [w["t"].ns for w in wire]
    assert [t["i"] for t in got] == list(range(1, 41))


def test_rfc3339_like_go_trims_trailing_zeros() -> None:
    assert go_rfc3339(START_NS + 123_456_780) == "2023-11-14T22:13:20.12345678Z"
    assert go_rfc3339(START_NS) == "2023-11-14T22:13:20Z"
    assert go_rfc3339(START_NS + 1) == "2023-11-14T22:13:20.000000001Z"


def test_pages_cover_everything_once_in_both_orders() -> None:
    market = Market(30)
    get = market.api()
    for sort in ("asc", "desc"):
        seen: list[tuple[str, int]] = []
        token = ""
        pages = 0
        while True:
            query = f"/v2/stocks/quotes?symbols=AAPL,MSFT&start={START}&limit=7&sort={sort}"
            status, body, _ = get(query + (f"&page_token={token}" if token else ""))
            assert status == 200
            assert sum(len(v) for v in body["quotes"].values()) <= 7
            seen += [(s, parse_rfc3339_ns(q["t"])) for s, qs in body["quotes"].items() for q in qs]
            pages += 1
            token = body["next_page_token"]
            if token is None:
                break
        assert pages == 9  # 60 quotes, 7 a page
        expected = [
            (s, w["t"].ns)
            for s in ("AAPL", "MSFT")
            for w in market.wire("/v2/iex", Kind.QUOTE, s)[:: 1 if sort == "asc" else -1]
        ]
        assert seen == expected


def test_start_and_end_are_inclusive_and_single_symbol_form() -> None:
    market = Market(20)
    get = market.api()
    wire = market.wire("/v2/iex", Kind.TRADE, "AAPL")
    start, end = go_rfc3339(wire[3]["t"].ns), go_rfc3339(wire[8]["t"].ns)
    status, body, _ = get(f"/v2/stocks/AAPL/trades?start={start}&end={end}")
    assert status == 200
    assert body["symbol"] == "AAPL"
    assert [t["i"] for t in body["trades"]] == [4, 5, 6, 7, 8, 9]


def test_bars_as_streamed_with_late_prints_applied_and_aggregated() -> None:
    market = Market(200)
    get = market.api()
    streamed = market.wire("/v2/iex", Kind.BAR, "AAPL")
    updates = {u["t"].ns: u for u in market.wire("/v2/iex", Kind.UPDATED_BAR, "AAPL")}
    assert updates, "the seed gives late prints"
    status, body, _ = get(f"/v2/stocks/bars?symbols=AAPL&timeframe=1Sec&start={START}")
    assert status == 422, "1Sec is no Alpaca timeframe"
    status, body, _ = get(f"/v2/stocks/bars?symbols=AAPL&timeframe=1Min&start={START}")
    assert status == 200
    final = [updates.get(b["t"].ns, b) for b in streamed]
    minute = 60 * SECOND
    buckets: dict[int, list[dict[str, Any]]] = {}
    for bar in final:
        buckets.setdefault(bar["t"].ns - bar["t"].ns % minute, []).append(bar)
    got = body["bars"]["AAPL"]
    assert len(got) == len(buckets) > 1
    for bar, (t, group) in zip(got, sorted(buckets.items()), strict=True):
        assert parse_rfc3339_ns(bar["t"]) == t
        assert (bar["o"], bar["c"]) == (group[0]["o"], group[-1]["c"])
        assert bar["h"] == max(b["h"] for b in group)
        assert (bar["v"], bar["n"]) == (sum(b["v"] for b in group), sum(b["n"] for b in group))
    assert got[0]["t"] == "2023-11-14T22:13:00Z"


def test_bars_of_the_simulators_interval_are_the_streamed_ones() -> None:
    market = Market(80)
    api = HistoricalApi(
        market.history,
        Authenticator(),
        bar_interval_ns=60 * SECOND,
        rate_limiter=RateLimiter(0),
    )
    status, _, _, _ = api.handle("/v2/stocks/bars?symbols=AAPL&timeframe=90Min", KEYS)
    assert status == http.HTTPStatus.OK
    status, _, _, _ = api.handle("/v2/stocks/bars?symbols=AAPL&timeframe=90Sec", KEYS)
    assert status == http.HTTPStatus.UNPROCESSABLE_ENTITY


def test_crypto_needs_no_keys_and_stocks_do() -> None:
    market = Market(5)
    get = market.api(Authenticator("k", "s"))
    status, body, _ = get(f"/v1beta3/crypto/us/trades?symbols=BTC/USD&start={START}", {})
    assert status == 200
    assert set(body["trades"]["BTC/USD"][0]) == {"t", "p", "s", "tks", "i"}
    # Alpaca's answer to a request without keys.
    assert get(f"/v2/stocks/trades?symbols=AAPL&start={START}", {})[:2] == (
        401,
        {"message": "unauthorized"},
    )
    wrong = {"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "nope"}
    assert get(f"/v2/stocks/trades?symbols=AAPL&start={START}", wrong)[0] == 403
    assert get(f"/v1beta3/crypto/us/trades?symbols=BTC/USD&start={START}", wrong)[0] == 403


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("/v2/stocks/trades?symbols=AAPL&limit=0", 422),
        ("/v2/stocks/trades?symbols=AAPL&limit=10001", 422),
        ("/v2/stocks/trades?symbols=AAPL&limit=10000", 200),
        ("/v2/stocks/trades?symbols=AAPL&sort=up", 422),
        ("/v2/stocks/trades?symbols=AAPL&feed=otc", 422),
        ("/v2/stocks/trades?symbols=AAPL&start=yesterday", 422),
        ("/v2/stocks/trades?symbols=AAPL&start=2023-11-14", 200),
        ("/v2/stocks/trades?symbols=AAPL&start=2023-11-14T22:13:20.5", 200),
        ("/v2/stocks/trades?symbols=AAPL&page_token=garbage", 422),
        ("/v2/stocks/trades", 400),
        ("/v2/stocks/bars?symbols=AAPL", 400),
        ("/v2/stocks/AAPL/orders", 404),
    ],
)
def test_parameters_are_checked(query: str, status: int) -> None:
    assert Market(1).api()(query)[0] == status


def test_rate_limit_answers_429_with_alpacas_headers() -> None:
    now = [1000.0]
    get = Market(1).api(limiter=RateLimiter(2, clock=lambda: now[0]))
    first = get("/v2/stocks/trades?symbols=AAPL")
    assert first[0] == 200
    assert first[2] == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "1",
        "X-RateLimit-Reset": "1060",
    }
    assert get("/v2/stocks/trades?symbols=AAPL")[0] == 200
    status, body, headers = get("/v2/stocks/trades?symbols=AAPL")
    assert (status, headers["X-RateLimit-Remaining"]) == (429, "0")
    assert body == {"message": "too many requests."}
    now[0] += 60
    assert get("/v2/stocks/trades?symbols=AAPL")[0] == 200


def test_history_bounds_and_its_snapshot() -> None:
    market = Market(50, HistoryBounds(seconds=3600, events=10))
    series = market.history.series("/v2/iex", Kind.TRADE, "AAPL")
    assert series is not None
    assert len(series) == 10
    assert [b["i"] for b in series.bodies[series.start :]] == list(range(41, 51))
    snapshot = market.history.snapshot()
    assert snapshot["events_per_series"] == 10
    assert snapshot["kept"]["/v2/iex"]["trade"]["events"] == 20


def test_page_tokens_are_opaque_but_stable() -> None:
    market = Market(10)
    get = market.api()
    _, body, _ = get(f"/v2/stocks/trades?symbols=AAPL&start={START}&limit=3")
    token = body["next_page_token"]
    assert json.loads(base64.urlsafe_b64decode(token + "==")) == [
        "AAPL",
        market.wire("/v2/iex", Kind.TRADE, "AAPL")[3]["t"].ns,
    ]


def test_amendments_statuses_and_bands_are_kept_each_in_its_series() -> None:
    market = Market(3000)
    snapshot = market.history.snapshot()["kept"]["/v2/iex"]
    for kind in (Kind.TRADE_CORRECTION, Kind.TRADE_CANCEL, Kind.TRADING_STATUS, Kind.LULD):
        for symbol in ("AAPL", "MSFT"):
            wire = market.wire("/v2/iex", kind, symbol)
            series = market.history.series("/v2/iex", kind, symbol)
            assert series is not None, (kind, symbol)
            assert len(series) == len(wire) > 0, (kind, symbol)
            assert series.bodies[series.start :] == wire
        assert snapshot[kind.value]["events"] > 0
    assert market.history.series("/v1beta3/crypto/us", Kind.LULD, "BTC/USD") is None
