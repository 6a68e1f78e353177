"""The shared market: fan-out to subscribers, idle symbols, order-book resets, the clock."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tickpipe_market_sim.clock import EventClock
from tickpipe_market_sim.encoding import Encoding
from tickpipe_market_sim.history import History, HistoryBounds
from tickpipe_market_sim.hub import FeedHub, Hub, steps_per_bar
from tickpipe_market_sim.protocol import Kind, SubscriptionRequest
from tickpipe_market_sim.session import Session
from tickpipe_market_sim.stats import SentStats, SimMetrics
from tickpipe_market_sim.universe import build_feeds

START_NS = 1_700_000_000_000_000_000
FEEDS = build_feeds(("AAPL", "MSFT"), ("BTC/USD", "ETH/USD"))


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[str | bytes] = []

    async def send(self, message: str | bytes) -> None:
        self.frames.append(message)

    async def close(self, code: int, reason: str) -> None:
        return None

    def messages(self) -> list[dict[str, Any]]:
        return [message for frame in self.frames for message in json.loads(frame)]


class Harness:
    """A feed hub on a fake clock; ``always`` is SIM_TRADING=always (default here: the
    while_subscribed mode, whose fan-out these tests were written for)."""

    def __init__(self, path: str, max_events: int = 0, *, always: bool = False) -> None:
        self.stats = SentStats(seed=1, metrics=SimMetrics(CollectorRegistry()))
        clock = EventClock(itertools.count(START_NS, 1_000_001).__next__)
        self.history = History(HistoryBounds(seconds=3600, events=0), lambda: START_NS)
        self.hub = FeedHub(
            FEEDS[path],
            seed=1,
            clock=clock,
            stats=self.stats,
            steps_per_bar=5,
            bar_interval_ns=10**9,
            max_events=max_events,
            history=self.history,
            always=always,
        )
        self._ids = itertools.count(1)
        self.sinks: dict[int, RecordingSink] = {}

    def session(self) -> Session:
        sink = RecordingSink()
        session = Session(next(self._ids), self.hub.feed, Encoding.JSON, sink, self.stats, 10_000)
        self.stats.connection_opened(session.id, self.hub.feed.path, "json")
        self.sinks[session.id] = sink
        return session

    def change(self, session: Session, action: str, **channels: list[str]) -> None:
        request = SubscriptionRequest(
            "subscribe" if action == "subscribe" else "unsubscribe",
            {name: tuple(symbols) for name, symbols in channels.items()},
        )
        self.hub.apply(session, session.subscriptions.apply(request))

    def received(self, session: Session) -> list[dict[str, Any]]:
        session.finish()
        asyncio.run(session.run_writer())
        return self.sinks[session.id].messages()


def keys(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["T"], m["S"]) for m in messages]


def test_nothing_is_simulated_before_someone_subscribes() -> None:
    h = Harness("/v2/iex")
    idle = h.session()
    assert h.hub.tick() == 0
    assert h.hub.markets == {}
    h.change(idle, "unsubscribe", trades=["AAPL"])
    assert h.hub.tick() == 0
    assert h.hub.markets == {}


def test_statuses_and_bands_come_with_the_trades_they_frame() -> None:
    h = Harness("/v2/iex")
    statuses, bands = h.session(), h.session()
    h.change(statuses, "subscribe", statuses=["AAPL"])
    h.change(bands, "subscribe", lulds=["AAPL"])
    assert h.hub.tick() == 2  # the first trade: the "T" trading status, and the first band
    assert keys(h.received(statuses)) == [("s", "AAPL")]
    assert keys(h.received(bands)) == [("l", "AAPL")]


def test_each_event_reaches_each_subscriber_once() -> None:
    h = Harness("/v2/iex")
    both, named, quotes = h.session(), h.session(), h.session()
    h.change(both, "subscribe", trades=["AAPL", "*"])
    h.change(named, "subscribe", trades=["AAPL"])
    h.change(quotes, "subscribe", quotes=["MSFT"])
    queued = sum(h.hub.tick() for _ in range(3))
    # per step: AAPL trade → 2 sessions, MSFT trade → 1 ("*"), MSFT quote → 1
    assert queued == 3 * 4
    got_both = h.received(both)
    assert sorted(keys(got_both)) == sorted([("t", "AAPL")] * 3 + [("t", "MSFT")] * 3)
    got_named = h.received(named)
    assert keys(got_named) == [("t", "AAPL")] * 3
    assert [m for m in got_both if m["S"] == "AAPL"] == got_named, "one event, same content"
    assert keys(h.received(quotes)) == [("q", "MSFT")] * 3
    assert [m["i"] for m in got_named] == [1, 2, 3]


def test_unsubscribed_symbols_stop() -> None:
    h = Harness("/v2/iex")
    session = h.session()
    h.change(session, "subscribe", trades=["AAPL"], quotes=["MSFT"])
    h.hub.tick()
    h.change(session, "unsubscribe", trades=["AAPL"])
    h.hub.tick()
    h.hub.remove(session)
    assert not h.hub.has_subscribers()
    assert h.hub.tick() == 0
    assert h.hub.markets["AAPL"].step == 1
    assert h.hub.markets["MSFT"].step == 2
    assert keys(h.received(session)) == [("t", "AAPL"), ("q", "MSFT"), ("q", "MSFT")]


def test_the_test_feed_only_carries_fakepaca() -> None:
    h = Harness("/v2/test")
    session = h.session()
    h.change(session, "subscribe", trades=["*", "AAPL"])
    h.hub.tick()
    h.hub.tick()
    assert set(h.hub.markets) == {"FAKEPACA"}
    assert keys(h.received(session)) == [("t", "FAKEPACA")] * 2


def test_order_book_subscribers_get_the_full_book_first() -> None:
    h = Harness("/v1beta3/crypto/us")
    early, late = h.session(), h.session()
    h.change(early, "subscribe", orderbooks=["BTC/USD"])
    h.hub.tick()
    h.change(late, "subscribe", orderbooks=["*"])
    h.hub.tick()
    h.change(early, "unsubscribe", orderbooks=["BTC/USD"])
    h.change(early, "subscribe", orderbooks=["BTC/USD"])

    got_early = h.received(early)
    assert [(m["S"], m["r"]) for m in got_early] == [
        ("BTC/USD", True),
        ("BTC/USD", False),
        ("BTC/USD", False),
        ("BTC/USD", True),  # subscribed again: a fresh full book
    ]
    got_late = h.received(late)
    assert [(m["S"], m["r"]) for m in got_late[:2]] == [("BTC/USD", True), ("ETH/USD", True)]
    assert sorted((m["S"], m["r"]) for m in got_late[2:]) == [
        ("BTC/USD", False),
        ("ETH/USD", False),
    ]
    assert got_late[2:][0] in got_early, "deltas are shared between subscribers"


def test_a_symbol_joining_under_a_wildcard_starts_with_a_full_book() -> None:
    h = Harness("/v1beta3/crypto/us")
    wildcard, other = h.session(), h.session()
    h.change(wildcard, "subscribe", orderbooks=["*"])
    h.change(other, "subscribe", orderbooks=["SOL/USD"])  # not in the universe
    h.hub.tick()
    got = h.received(wildcard)
    sol = [m["r"] for m in got if m["S"] == "SOL/USD"]
    assert sol == [True], "its first SOL/USD message is the whole book, not a delta"


def test_generated_counts() -> None:
    h = Harness("/v2/iex", max_events=2)
    session = h.session()
    h.change(session, "subscribe", trades=["AAPL"])
    for _ in range(5):
        h.hub.tick()
    generated = h.hub.generated()
    assert list(generated) == ["AAPL"]
    # Two trades, then the cap closes their bar (made though only trades were wanted).
    assert (generated["AAPL"]["trade"], generated["AAPL"]["bar"]) == (2, 1)


@pytest.mark.parametrize(
    ("interval", "rate", "steps"),
    [(60, 5, 300), (0.1, 50, 5), (0.5, 5, 3), (0.01, 5, 1), (0.3, 10, 3)],
)
def test_steps_per_bar(interval: float, rate: float, steps: int) -> None:
    assert steps_per_bar(interval, rate) == steps


def _clock_run(rate: float, max_rate: float, seconds: float) -> int:
    h = Harness("/v2/iex")
    session = h.session()
    hub = Hub({"/v2/iex": h.hub}, rate_per_symbol=rate, max_rate=max_rate)

    async def scenario() -> None:
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0.05)
        assert h.hub.markets == {}, "the clock idles without subscribers"
        h.change(session, "subscribe", trades=["AAPL"])
        hub.notify()
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    return h.hub.markets["AAPL"].step


def test_the_clock_runs_at_the_configured_rate() -> None:
    steps = _clock_run(rate=100, max_rate=1e6, seconds=0.3)
    assert 10 <= steps <= 32


def test_the_message_cap_slows_the_clock_down() -> None:
    # One message per step, at most 10 messages per second: ~4 steps in 0.3 s, not 30.
    steps = _clock_run(rate=100, max_rate=10, seconds=0.3)
    assert 1 <= steps <= 5


class SlowFeed:
    """A feed whose every step takes longer than the clock's period (a loaded machine)."""

    def __init__(self, others_ran: asyncio.Event) -> None:
        self._others_ran = others_ran
        self.steps = 0
        self.sixty_steps = asyncio.Event()

    def trading(self) -> bool:
        return True

    def tick(self) -> int:
        self.steps += 1
        deadline = time.monotonic() + 0.002  # twice the period of 1 ms
        while time.monotonic() < deadline:
            pass
        if self.steps >= 50 and not self._others_ran.is_set():
            raise AssertionError(f"{self.steps} steps behind schedule never yielded the loop")
        if self.steps >= 60:
            self.sixty_steps.set()
        return 1


def test_a_clock_behind_schedule_still_yields_to_the_event_loop() -> None:
    async def scenario() -> int:
        others_ran = asyncio.Event()
        feed = SlowFeed(others_ran)
        hub = Hub({"/v2/iex": feed}, rate_per_symbol=1000, max_rate=1e6)  # type: ignore[dict-item]
        task = asyncio.create_task(hub.run())
        await asyncio.sleep(0)
        others_ran.set()  # this coroutine ran again while the clock was behind
        sixty = asyncio.create_task(feed.sixty_steps.wait())
        # Either the clock made 60 steps while yielding, or it failed (never yielded).
        await asyncio.wait({task, sixty}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        sixty.cancel()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return feed.steps

    assert asyncio.run(scenario()) >= 60


def test_an_always_trading_market_trades_before_anyone_subscribes() -> None:
    h = Harness("/v2/iex", always=True)
    for _ in range(3):
        h.hub.tick()
    assert sorted(h.hub.generated()) == ["AAPL", "MSFT"], "the whole universe trades"
    assert h.hub.generated()["AAPL"] == {"trade": 3, "quote": 3, "trading_status": 1, "luld": 1}
    session = h.session()
    h.change(session, "subscribe", trades=["AAPL"])
    h.hub.tick()
    got = h.received(session)
    # The subscriber sees the market from now on: the fourth trade, not the first.
    assert [(m["T"], m["i"]) for m in got] == [("t", 4)]
    recorded = h.history.series("/v2/iex", Kind.TRADE, "AAPL")
    assert recorded is not None
    assert [b["i"] for b in recorded.bodies] == [1, 2, 3, 4]


def test_a_symbol_named_outside_the_universe_keeps_trading_after_unsubscribe() -> None:
    h = Harness("/v2/iex", always=True)
    session = h.session()
    h.change(session, "subscribe", trades=["XYZ"])
    h.hub.tick()
    h.change(session, "unsubscribe", trades=["XYZ"])
    h.hub.tick()
    assert h.hub.generated()["XYZ"]["trade"] == 2
