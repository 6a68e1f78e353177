"""The shared market: one generator per (feed, symbol), fanned out to its subscribers.

Every symbol has exactly one :class:`SymbolMarket` per feed, however many clients watch
it; each of its events goes to every session subscribed to that symbol and channel (by
name or through "*").

When symbols trade is SIM_TRADING's choice:

- ``always`` (the default): a market. Every symbol of the feed's universe trades from the
  simulator's start, and any other symbol from the moment someone first names it, whether
  or not anyone is connected; a subscriber sees the live events from the moment it
  subscribes, as on Alpaca, and what it missed is in the history (``history``), which
  records every event.
- ``while_subscribed``: a symbol advances only while someone subscribes to it, so a fixed
  run (SIM_MAX_EVENTS_PER_SYMBOL) reaches its subscribers whole and a fresh sim's first
  trade has id 1. For tests and benchmarks that count what one client received.

One clock task drives all markets at SIM_RATE_PER_SYMBOL steps per second and stretches
its period whenever the messages of a tick would exceed SIM_MAX_RATE per second overall,
so the cap slows the market down instead of dropping anything.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from typing import Any

from tickpipe_market_sim.clock import EventClock
from tickpipe_market_sim.history import History
from tickpipe_market_sim.market import AmendmentRates, Event, SymbolMarket
from tickpipe_market_sim.protocol import CHANNEL_OF, STOCK_ONLY_KINDS, WILDCARD, Kind
from tickpipe_market_sim.session import Session
from tickpipe_market_sim.stats import SentStats
from tickpipe_market_sim.subscriptions import SubscriptionChange
from tickpipe_market_sim.universe import AssetClass, Feed, profile_for

BOOK_CHANNEL = CHANNEL_OF[Kind.ORDERBOOK]
TRADING_MODES = ("always", "while_subscribed")


def steps_per_bar(bar_interval: float, rate_per_symbol: float) -> int:
    """Steps in one bar interval; rounded to 1e-9 first so 0.1 s x 50/s is 5, not 6."""
    return max(1, math.ceil(round(bar_interval * rate_per_symbol, 9)))


class FeedHub:
    """Subscriptions and markets of one feed (one WebSocket path)."""

    def __init__(
        self,
        feed: Feed,
        *,
        seed: int,
        clock: EventClock,
        stats: SentStats,
        steps_per_bar: int,
        bar_interval_ns: int,
        max_events: int,
        history: History,
        always: bool,
        amendments: AmendmentRates | None = None,
    ) -> None:
        self.feed = feed
        self._amendments = amendments
        self._history = history
        self._always = always
        self._seed = seed
        self._clock = clock
        self._stats = stats
        self._steps_per_bar = steps_per_bar
        self._bar_interval_ns = bar_interval_ns
        self._max_events = max_events
        crypto = feed.asset_class is AssetClass.CRYPTO
        self._kinds = tuple(
            kind
            for kind in Kind
            if (kind is not Kind.ORDERBOOK or crypto) and not (crypto and kind in STOCK_ONLY_KINDS)
        )
        self._all_kinds = frozenset(self._kinds)
        self.markets: dict[str, SymbolMarket] = {}
        # channel → symbol (or "*") → sessions subscribed to it.
        self._index: dict[str, dict[str, set[Session]]] = {name: {} for name in feed.channels}
        # Symbols that trade: in "always" mode the universe plus every symbol ever named.
        self._trading: dict[str, None] = dict.fromkeys(feed.universe) if always else {}
        self._active: list[str] = self._compute_active()

    # --- subscriptions ----------------------------------------------------------------

    def apply(self, session: Session, change: SubscriptionChange) -> None:
        """Index a session's subscription change; new order-book subscribers get the
        full book of each symbol right away (after the subscription reply)."""
        for channel, symbol in change.removed:
            subscribers = self._index[channel].get(symbol)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self._index[channel][symbol]
        for channel, symbol in change.added:
            self._index[channel].setdefault(symbol, set()).add(session)
        self._active = self._compute_active()
        if any(channel == BOOK_CHANNEL for channel, _ in change.removed):
            session.book_synced = {
                s for s in session.book_synced if session.subscriptions.covers(BOOK_CHANNEL, s)
            }
        new_books = [symbol for channel, symbol in change.added if channel == BOOK_CHANNEL]
        for symbol in self._expand(new_books):
            if symbol not in session.book_synced:
                self._send_book(session, self.market(symbol))

    def remove(self, session: Session) -> None:
        self.apply(session, session.subscriptions.clear())

    def has_subscribers(self) -> bool:
        """Whether anyone subscribes to anything on this feed."""
        return any(self._index.values())

    def trading(self) -> bool:
        """Whether any symbol of this feed trades now."""
        return bool(self._active)

    def _expand(self, symbols: Iterable[str]) -> list[str]:
        """Named symbols this feed carries; "*" stands for the universe and every symbol
        already being simulated here."""
        out: dict[str, None] = {}
        for symbol in symbols:
            if symbol == WILDCARD:
                out.update(dict.fromkeys(self.feed.universe))
                out.update(dict.fromkeys(self._active))
            elif self.feed.carries(symbol):
                out[symbol] = None
        return list(out)

    def _compute_active(self) -> list[str]:
        named = {s for subs in self._index.values() for s in subs if s != WILDCARD}
        if self._always:
            self._trading.update(dict.fromkeys(sorted(s for s in named if self.feed.carries(s))))
            return list(self._trading)
        wildcard = any(WILDCARD in subs for subs in self._index.values())
        active = {s for s in named if self.feed.carries(s)}
        if wildcard:
            active.update(self.feed.universe)
        return sorted(active)

    def recipients(self, channel: str, symbol: str) -> set[Session]:
        subs = self._index.get(channel)
        if not subs:
            return set()
        return subs.get(symbol, set()) | subs.get(WILDCARD, set())

    def market(self, symbol: str) -> SymbolMarket:
        market = self.markets.get(symbol)
        if market is None:
            market = SymbolMarket(
                profile=profile_for(symbol, self.feed.asset_class),
                venues=self.feed.venues,
                seed=self._seed,
                clock=self._clock,
                steps_per_bar=self._steps_per_bar,
                bar_interval_ns=self._bar_interval_ns,
                max_events=self._max_events,
                time_windows=True,
                amendments=self._amendments,
            )
            self.markets[symbol] = market
        return market

    # --- one tick of the clock ------------------------------------------------------------

    def tick(self) -> int:
        """Advance every watched symbol one step; returns the messages queued."""
        queued = 0
        path, history = self.feed.path, self._history
        for symbol in self._active:
            wanted = self._wanted(symbol)
            if not wanted:
                continue
            for event in self.market(symbol).advance(wanted):
                self._stats.generated(path, event.kind)
                history.record(path, event)
                queued += self._fan_out(event)
        return queued

    def _wanted(self, symbol: str) -> frozenset[Kind]:
        """The kinds a symbol produces this step: all of them in a market that trades
        always, else those someone subscribes to."""
        if self._always:
            return self._all_kinds
        return frozenset(k for k in self._kinds if self.recipients(CHANNEL_OF[k], symbol))

    def _fan_out(self, event: Event) -> int:
        sessions = self.recipients(CHANNEL_OF[event.kind], event.symbol)
        for session in sessions:
            if event.kind is Kind.ORDERBOOK and event.symbol not in session.book_synced:
                # Joined through "*" after this symbol appeared: the full book, not a delta.
                self._send_book(session, self.market(event.symbol))
            else:
                session.push_data(event.kind, event.symbol, event.body)
        return len(sessions)

    def _send_book(self, session: Session, market: SymbolMarket) -> None:
        snapshot = market.book_snapshot()
        if session.push_data(snapshot.kind, snapshot.symbol, snapshot.body):
            session.book_synced.add(market.symbol)

    def finished(self) -> bool:
        """Every trading symbol has produced all it will (``SIM_MAX_EVENTS_PER_SYMBOL``)."""
        for symbol in self._active:
            wanted = self._wanted(symbol)
            if wanted and not self.market(symbol).finished(wanted):
                return False
        return True

    def generated(self) -> dict[str, dict[str, int]]:
        return {
            symbol: {kind.value: n for kind, n in market.generated.items() if n}
            for symbol, market in sorted(self.markets.items())
        }


class Hub:
    """All feeds plus the clock task that drives them."""

    def __init__(
        self, feeds: Mapping[str, FeedHub], *, rate_per_symbol: float, max_rate: float
    ) -> None:
        self.feeds = dict(feeds)
        self._period = 1.0 / rate_per_symbol
        self._max_rate = max_rate
        self._wakeup = asyncio.Event()

    def notify(self) -> None:
        """Someone subscribed: wake the clock if it sleeps for lack of subscribers."""
        self._wakeup.set()

    def _idle(self) -> bool:
        return not any(feed.trading() for feed in self.feeds.values())

    def tick(self) -> int:
        return sum(feed.tick() for feed in self.feeds.values())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if self._idle():
                self._wakeup.clear()
                if self._idle():
                    await self._wakeup.wait()
                # The first step of a new subscription comes at once, not a period later.
                next_at = loop.time()
            # Always await, even when behind: a step that takes longer than the period
            # (a loaded machine, a "*" subscription) would otherwise never give the event
            # loop back, starving every session's writer, the slow-client check and stop().
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            queued = self.tick()
            # Absolute schedule, so the rates hold on average without drift: the next tick
            # is one period on, or later if this one's messages would exceed SIM_MAX_RATE.
            next_at += max(self._period, queued / self._max_rate)
            now = loop.time()
            if next_at < now - self._period:
                next_at = now  # fell behind (a stall): resume, do not burst to catch up

    def finished(self) -> bool:
        """A fixed run (``SIM_MAX_EVENTS_PER_SYMBOL``) is over: some symbol trades (in the
        while_subscribed mode: someone subscribed), and every trading symbol of every feed
        has generated all it will. What was sent is in /stats."""
        trading = [feed for feed in self.feeds.values() if feed.trading()]
        return bool(trading) and all(feed.finished() for feed in trading)

    def generated(self) -> dict[str, Any]:
        return {path: feed.generated() for path, feed in self.feeds.items() if feed.markets}
