"""One symbol's simulated market: a seeded random walk and the messages it produces.

The market advances in *steps* (the hub calls :meth:`SymbolMarket.advance` at
SIM_RATE_PER_SYMBOL steps per second). Each step moves the mid price one notch of a
mean-reverting geometric random walk and yields at most one event of every kind wanted: a
trade, a quote, an order-book delta, and, when a bar window closes, bars.

Bar windows are real time windows (``time_windows``, what the live hub uses): a bar holds
exactly the trades stamped in ``[t, t + SIM_BAR_INTERVAL)``, and closes when the first trade
of a later interval comes (or when the trade cap is reached, so a fixed run ends with its
last bar), so a pause in the steps never puts trades from both sides of it into one bar.
Without it (the firehose's pre-generated runs) a bar closes every ``steps_per_bar`` steps,
which keeps the mix of a run independent of how fast it was generated.

Stock trades are occasionally amended after the fact, as on the real tape: a few steps after a
trade, a correction (``c``: the trade as printed and as corrected, under a new trade id from
``CORRECTED_ID_BASE`` up, so the trade ids stay contiguous) or a cancel/error (``x``). Trading
statuses (``s``: a "T" at a symbol's first trade, and now and then a halt "H" with its
resumption "T" some steps later) and LULD price bands (``l``: at the first trade, and again
whenever a trade moves ``LULD_REBAND_MOVE`` away from the band's reference price) frame the
trading. These are reports about the trades, not part of them: a simulated halt does not
stop the trades, and an amended trade keeps its place in the bars.

Determinism: every kind draws from its own random stream, seeded from (SIM_SEED, symbol,
kind), and the mid price from another, so the n-th step of a symbol is the same in every
run with the same seed, and a kind's content does not depend on which other kinds were
subscribed. The amendments and statuses draw from streams of their own, once per trade
whatever is subscribed, so adding them changed nothing in the other kinds for a seed. Only
the timestamps (wall clock) differ between runs.

This module does no I/O and knows nothing about connections; it is tested on its own.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field

from tickpipe_market_sim.clock import EpochNanos, EventClock
from tickpipe_market_sim.protocol import BAR_KINDS, WIRE_TYPE, Kind, Message
from tickpipe_market_sim.universe import AssetClass, SymbolProfile

# Standard deviation of the mid price's log return per step (1 bp), and how strongly it is
# pulled back to the starting price, so a long-running sim stays plausible.
STEP_VOLATILITY = 1e-4
MEAN_REVERSION = 1e-4
# Share of closed bars that later receive a late print and are re-sent as updated bars.
LATE_PRINT_PROBABILITY = 0.2
BOOK_LEVELS = 10
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class AmendmentRates:
    """Per stock trade: the chance that it is later corrected, or cancelled; and the chance
    that a (simulated) trading halt begins at it."""

    correction: float = 0.004
    cancel: float = 0.002
    halt: float = 0.0005


# An amendment comes this many steps after its trade (inclusive bounds); a halt lasts so long.
AMEND_DELAY_STEPS = (1, 10)
HALT_STEPS = (5, 20)
# Corrected trades get new ids from here up (the original id plus this), far from the ids the
# simulated trades use, so the trade ids of a symbol stay contiguous.
CORRECTED_ID_BASE = 1_000_000_000_000
# LULD bands: 5% either side of the reference price (Tier 1), re-banded when a trade moves
# this far from the reference (Alpaca's feed re-bands on a 1% move; a smaller move keeps the
# simulated bands coming within a test run).
LULD_BAND = 0.05
LULD_REBAND_MOVE = 0.002

# Trades are simulated whenever trades, any bar kind, trading statuses or LULD bands are
# wanted: bars aggregate them, and statuses and bands come with them.
TRADE_FEEDING = frozenset({Kind.TRADE, Kind.TRADING_STATUS, Kind.LULD}) | BAR_KINDS


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    symbol: str
    body: Message


def seeded_rng(seed: int, symbol: str, stream: str) -> random.Random:
    """An independent random stream per (seed, symbol, purpose); hashlib, not hash(),
    because Python salts str hashes per process."""
    material = f"{seed}|{symbol}|{stream}".encode()
    return random.Random(int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big"))


@dataclass(slots=True)
class _Bar:
    """OHLCV of a bar window (prices in integer ticks until they go on the wire)."""

    t: int
    open: int
    high: int
    low: int
    close: int
    volume: float = 0
    count: int = 0
    notional: float = 0.0

    @classmethod
    def starting(cls, t: int, price: int) -> _Bar:
        return cls(t=t, open=price, high=price, low=price, close=price)

    def add(self, price: int, size: float, price_value: float) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price
        self.volume += size
        self.count += 1
        self.notional += price_value * size


@dataclass(slots=True)
class _Window:
    """The trades of the bar window in progress: its first timestamp and its bar."""

    first_ns: int
    bar: _Bar


@dataclass(slots=True)
class _Book:
    bids: dict[int, float] = field(default_factory=dict)
    asks: dict[int, float] = field(default_factory=dict)


class SymbolMarket:
    def __init__(
        self,
        *,
        profile: SymbolProfile,
        venues: Sequence[tuple[str, float]],
        seed: int,
        clock: EventClock,
        steps_per_bar: int,
        bar_interval_ns: int,
        max_events: int = 0,
        time_windows: bool = False,
        amendments: AmendmentRates | None = None,
    ) -> None:
        self.symbol = profile.symbol
        self._time_windows = time_windows
        self._closed: list[Event] = []
        self._profile = profile
        self._stock = profile.asset_class is AssetClass.STOCK
        self._scale = int(10**profile.price_decimals)
        self._clock = clock
        self._steps_per_bar = max(1, steps_per_bar)
        self._bar_interval_ns = max(1, bar_interval_ns)
        self._max_events = max_events
        self._venue_codes = [code for code, _ in venues]
        self._venue_weights = list(_cumulative(weight for _, weight in venues))

        self._walk_rng = seeded_rng(seed, profile.symbol, "walk")
        self._trade_rng = seeded_rng(seed, profile.symbol, "trade")
        self._quote_rng = seeded_rng(seed, profile.symbol, "quote")
        self._book_rng = seeded_rng(seed, profile.symbol, "orderbook")
        self._bar_rng = seeded_rng(seed, profile.symbol, "bar")
        self._amend_rng = seeded_rng(seed, profile.symbol, "amend")
        self._status_rng = seeded_rng(seed, profile.symbol, "status")
        self._rates = amendments or AmendmentRates()
        # (due step, kind, body without its "t"): amendments and resumptions to come.
        self._pending: list[tuple[int, Kind, Message]] = []
        self._luld_ref: int | None = None
        self._statuses_started = False

        self._anchor = math.log(profile.start_price)
        self._log_mid = self._anchor
        self._min_ticks = max(2, round(profile.start_price * self._scale * 0.01))

        self.step = 0
        self.generated: dict[Kind, int] = dict.fromkeys(Kind, 0)
        self._next_trade_id = 1
        self._window: _Window | None = None
        self._last_bar_t: int | None = None
        self._late: _Bar | None = None
        self._daily: _Bar | None = None

        start_ticks = round(profile.start_price * self._scale)
        self._book_spacing = max(1, round(start_ticks * 1e-4))
        self._book = _Book()
        if not self._stock:
            self._book = self._book_around(self._mid(), _Book(), self._book_rng)

    # --- the step -------------------------------------------------------------------

    def advance(self, wanted: Set[Kind]) -> list[Event]:
        """One step: the events of the kinds in ``wanted`` that are still under the cap.

        Bars close on step boundaries (every ``steps_per_bar`` steps), so their content is
        a function of the trade sequence alone, whatever the wall clock did meanwhile.
        """
        events: list[Event] = []
        if self._pending:
            events.extend(self._due(wanted))
        if self._late is not None:
            events.extend(self._late_print())
        if self._time_windows:
            if self._window is not None and not self._room(Kind.TRADE):
                events.extend(self._close_window())  # no trade will ever close it
        elif self.step > 0 and self.step % self._steps_per_bar == 0:
            events.extend(self._close_window())
        if wanted & TRADE_FEEDING and self._room(Kind.TRADE):
            trade = self._trade()
            if self._closed:  # the trade began a new interval: the old bar comes first
                events.extend(self._closed)
                self._closed = []
            events.append(trade)
            if self._stock:
                events.extend(self._after_trade(trade.body, wanted))
        if Kind.QUOTE in wanted and self._room(Kind.QUOTE):
            events.append(self._quote())
        if Kind.ORDERBOOK in wanted and not self._stock and self._room(Kind.ORDERBOOK):
            events.append(self._book_delta())
        self.step += 1
        self._walk()
        return events

    def finished(self, wanted: Set[Kind]) -> bool:
        """With ``max_events``: nothing more will ever come for these kinds — every capped
        stream is at its cap, the last bar window is closed and its late print is out."""
        if self._max_events == 0:
            return False
        streams = [Kind.TRADE] if wanted & TRADE_FEEDING else []
        if Kind.QUOTE in wanted:
            streams.append(Kind.QUOTE)
        if Kind.ORDERBOOK in wanted and not self._stock:
            streams.append(Kind.ORDERBOOK)
        return (
            all(not self._room(kind) for kind in streams)
            and self._window is None
            and self._late is None
            and not self._pending
        )

    def book_snapshot(self) -> Event:
        """The whole book (``r`` true): what a new order-book subscriber gets first.
        Not a generated event: it does not count towards SIM_MAX_EVENTS_PER_SYMBOL."""
        return Event(
            Kind.ORDERBOOK,
            self.symbol,
            self._book_message(
                sorted(self._book.bids.items(), reverse=True),
                sorted(self._book.asks.items()),
                reset=True,
            ),
        )

    # --- price process --------------------------------------------------------------

    def _walk(self) -> None:
        shock = self._walk_rng.gauss(0.0, 1.0)
        self._log_mid += MEAN_REVERSION * (self._anchor - self._log_mid) + STEP_VOLATILITY * shock

    def _mid(self) -> int:
        return max(self._min_ticks, round(math.exp(self._log_mid) * self._scale))

    def _price(self, ticks: int) -> float:
        return ticks / self._scale

    def _spread(self, rng: random.Random, mid: int) -> int:
        """Bid-ask spread in ticks, about 0.5-3 bp of the price, at least one tick."""
        return max(1, round(mid * rng.uniform(0.5, 3.0) * 1e-4))

    def _room(self, kind: Kind) -> bool:
        return self._max_events == 0 or self.generated[kind] < self._max_events

    def _emit(self, kind: Kind, body: Message) -> Event:
        self.generated[kind] += 1
        return Event(kind, self.symbol, body)

    def _venue(self, rng: random.Random) -> str:
        return rng.choices(self._venue_codes, cum_weights=self._venue_weights)[0]

    def _crypto_size(self, rng: random.Random, price: float) -> float:
        """Fractional size of an order worth a few hundred dollars (log-normal)."""
        notional = math.exp(rng.gauss(math.log(400.0), 1.2))
        step = 10.0**-self._profile.size_decimals
        return max(step, round(notional / price, self._profile.size_decimals))

    # --- trades and quotes ----------------------------------------------------------

    def _trade(self) -> Event:
        rng, mid = self._trade_rng, self._mid()
        spread = self._spread(rng, mid)
        trade_id, self._next_trade_id = self._next_trade_id, self._next_trade_id + 1
        now = self._clock.now()
        body: Message
        if self._stock:
            ticks = mid + rng.randint(-(spread // 2), spread - spread // 2)
            size: float
            if rng.random() < 0.65:
                size = 100 * rng.choice((1, 1, 1, 2, 2, 3, 5, 10))
                conditions = ["@"]
            else:
                size = rng.randint(1, 99)
                conditions = ["@", "I"]  # odd lot
            if rng.random() < 0.08:
                conditions.insert(1, "F")  # intermarket sweep
            body = {
                "T": WIRE_TYPE[Kind.TRADE],
                "S": self.symbol,
                "i": trade_id,
                "x": self._venue(rng),
                "p": self._price(ticks),
                "s": size,
                "c": conditions,
                "t": EpochNanos(now),
                "z": self._profile.tape,
            }
        else:
            # Crypto trades print at the touch: buyer-initiated at the ask, seller at the bid.
            taker = "B" if rng.random() < 0.5 else "S"
            bid = mid - spread // 2
            ticks = bid + spread if taker == "B" else bid
            size = self._crypto_size(rng, self._price(ticks))
            body = {
                "T": WIRE_TYPE[Kind.TRADE],
                "S": self.symbol,
                "p": self._price(ticks),
                "s": size,
                "t": EpochNanos(now),
                "i": trade_id,
                "tks": taker,
            }
        self._record_trade(ticks, size, now)
        return self._emit(Kind.TRADE, body)

    def _quote(self) -> Event:
        rng, mid = self._quote_rng, self._mid()
        spread = self._spread(rng, mid)
        bid = mid - spread // 2
        ask = bid + spread
        now = EpochNanos(self._clock.now())
        body: Message
        if self._stock:
            body = {
                "T": WIRE_TYPE[Kind.QUOTE],
                "S": self.symbol,
                "bx": self._venue(rng),
                "bp": self._price(bid),
                "bs": 100 * rng.randint(1, 12),
                "ax": self._venue(rng),
                "ap": self._price(ask),
                "as": 100 * rng.randint(1, 12),
                "c": ["R"],  # regular two-sided quote
                "t": now,
                "z": self._profile.tape,
            }
        else:
            body = {
                "T": WIRE_TYPE[Kind.QUOTE],
                "S": self.symbol,
                "bp": self._price(bid),
                "bs": self._crypto_size(rng, self._price(bid)),
                "ap": self._price(ask),
                "as": self._crypto_size(rng, self._price(ask)),
                "t": now,
            }
        return self._emit(Kind.QUOTE, body)

    # --- what amends and frames the stock trades ------------------------------------

    def _after_trade(self, trade: Message, wanted: Set[Kind]) -> list[Event]:
        """The draws every stock trade makes (whatever is wanted, so that the sequences do
        not depend on it), and the statuses and bands it brings at once."""
        events: list[Event] = []
        if not self._statuses_started:
            self._statuses_started = True
            events += self._status("T", "Trading", "", "", wanted)
        rates, rng = self._rates, self._amend_rng
        draw = rng.random()
        if draw < rates.correction + rates.cancel:
            due = self.step + rng.randint(*AMEND_DELAY_STEPS)
            if draw < rates.correction:
                self._pending.append((due, Kind.TRADE_CORRECTION, self._correction(trade, rng)))
            else:
                self._pending.append((due, Kind.TRADE_CANCEL, _cancel(trade, rng)))
        status_rng = self._status_rng
        if status_rng.random() < rates.halt:
            resume = self.step + status_rng.randint(*HALT_STEPS)
            events += self._status("H", "Trading Halt", "LUDP", "Volatility Trading Pause", wanted)
            resumption = _status_body(
                self.symbol,
                "T",
                "Trading Resumption",
                "LUDP",
                "Volatility Trading Pause",
                self._profile.tape,
            )
            self._pending.append((resume, Kind.TRADING_STATUS, resumption))
        price = round(trade["p"] * self._scale)
        ref = self._luld_ref
        if ref is None or abs(price - ref) >= ref * LULD_REBAND_MOVE:
            self._luld_ref = price
            events += self._luld(price, wanted)
        return events

    def _correction(self, trade: Message, rng: random.Random) -> Message:
        price, size = trade["p"], trade["s"]
        if rng.random() < 0.5:  # the price was misreported by a few cents
            ticks = round(price * self._scale) + rng.choice((-3, -2, -1, 1, 2, 3))
            price = self._price(max(1, ticks))
        else:  # the size was
            size = size + rng.choice((-1, 1)) * rng.randint(1, 99)
            if size <= 0:
                size += 100
        return {
            "T": WIRE_TYPE[Kind.TRADE_CORRECTION],
            "S": self.symbol,
            "x": trade["x"],
            "oi": trade["i"],
            "op": trade["p"],
            "os": trade["s"],
            "oc": list(trade["c"]),
            "ci": CORRECTED_ID_BASE + trade["i"],
            "cp": price,
            "cs": size,
            "cc": list(trade["c"]),
            "z": trade["z"],
        }

    def _due(self, wanted: Set[Kind]) -> list[Event]:
        """The pending amendments and resumptions whose step has come, in the order drawn."""
        due = [item for item in self._pending if item[0] <= self.step]
        if not due:
            return []
        self._pending = [item for item in self._pending if item[0] > self.step]
        events = []
        for _, kind, body in due:
            if kind in wanted and self._room(kind):
                events.append(self._emit(kind, {**body, "t": EpochNanos(self._clock.now())}))
        return events

    def _status(
        self, code: str, message: str, reason: str, reason_message: str, wanted: Set[Kind]
    ) -> list[Event]:
        if Kind.TRADING_STATUS not in wanted or not self._room(Kind.TRADING_STATUS):
            return []
        body = _status_body(self.symbol, code, message, reason, reason_message, self._profile.tape)
        body["t"] = EpochNanos(self._clock.now())
        return [self._emit(Kind.TRADING_STATUS, body)]

    def _luld(self, ref: int, wanted: Set[Kind]) -> list[Event]:
        if Kind.LULD not in wanted or not self._room(Kind.LULD):
            return []
        band = round(ref * LULD_BAND)
        return [
            self._emit(
                Kind.LULD,
                {
                    "T": WIRE_TYPE[Kind.LULD],
                    "S": self.symbol,
                    "u": self._price(ref + band),
                    "d": self._price(max(1, ref - band)),
                    "i": "B",
                    "t": EpochNanos(self._clock.now()),
                    "z": self._profile.tape,
                },
            )
        ]

    # --- bars -----------------------------------------------------------------------

    def _record_trade(self, ticks: int, size: float, now: int) -> None:
        price = self._price(ticks)
        if (
            self._time_windows
            and self._window is not None
            and now - now % self._bar_interval_ns
            != self._window.first_ns - self._window.first_ns % self._bar_interval_ns
        ):
            self._closed.extend(self._close_window())
        if self._window is None:
            self._window = _Window(first_ns=now, bar=_Bar.starting(0, ticks))
        self._window.bar.add(ticks, size, price)
        day = now - now % DAY_NS
        if self._daily is None or self._daily.t != day:
            self._daily = _Bar.starting(day, ticks)
        self._daily.add(ticks, size, price)

    def _close_window(self) -> list[Event]:
        window, self._window = self._window, None
        if window is None:
            return []  # nobody traded in this window: Alpaca sends no bar either
        bar = window.bar
        # Stamp the bar with the start of its interval, as Alpaca does; strictly after the
        # previous bar so that a bar's (symbol, t) identifies it.
        bar.t = window.first_ns - window.first_ns % self._bar_interval_ns
        if self._last_bar_t is not None and bar.t <= self._last_bar_t:
            bar.t = self._last_bar_t + self._bar_interval_ns
        self._last_bar_t = bar.t
        events = []
        if self._room(Kind.BAR):
            events.append(self._emit(Kind.BAR, self._bar_message(Kind.BAR, bar)))
        if self._daily is not None and self._room(Kind.DAILY_BAR):
            events.append(
                self._emit(Kind.DAILY_BAR, self._bar_message(Kind.DAILY_BAR, self._daily))
            )
        # Drawn for every bar, wanted or not, so later bars do not depend on subscriptions.
        if self._bar_rng.random() < LATE_PRINT_PROBABILITY:
            self._late = bar
        return events

    def _late_print(self) -> list[Event]:
        """A print reported after its minute closed: the bar is revised and re-sent."""
        bar, self._late = self._late, None
        if bar is None:
            return []
        rng = self._bar_rng
        price = self._price(bar.close)
        size: float = rng.randint(1, 99) if self._stock else self._crypto_size(rng, price)
        bar.add(bar.close, size, price)
        if self._daily is not None:
            self._daily.add(bar.close, size, price)
        if not self._room(Kind.UPDATED_BAR):
            return []
        return [self._emit(Kind.UPDATED_BAR, self._bar_message(Kind.UPDATED_BAR, bar))]

    def _bar_message(self, kind: Kind, bar: _Bar) -> Message:
        volume = bar.volume if self._stock else round(bar.volume, 9)
        low, high = self._price(bar.low), self._price(bar.high)
        return {
            "T": WIRE_TYPE[kind],
            "S": self.symbol,
            "o": self._price(bar.open),
            "h": high,
            "l": low,
            "c": self._price(bar.close),
            "v": volume,
            "t": EpochNanos(bar.t),
            "n": bar.count,
            # Clamped: with every print at one price, float division can land a hair outside.
            "vw": min(max(bar.notional / bar.volume, low), high),
        }

    # --- order book (crypto) --------------------------------------------------------

    def _book_around(self, mid: int, old: _Book, rng: random.Random) -> _Book:
        """Levels on a fixed price grid around ``mid``; surviving levels keep their size,
        so a small move of the mid changes only a few levels."""
        spacing = self._book_spacing
        best_bid = (mid - 1) // spacing * spacing
        best_ask = (mid // spacing + 1) * spacing
        book = _Book()
        for i in range(BOOK_LEVELS):
            bid = best_bid - i * spacing
            if bid > 0:
                book.bids[bid] = old.bids.get(bid) or self._level_size(rng, bid)
            ask = best_ask + i * spacing
            book.asks[ask] = old.asks.get(ask) or self._level_size(rng, ask)
        return book

    def _level_size(self, rng: random.Random, ticks: int) -> float:
        return self._crypto_size(rng, self._price(ticks))

    def _book_delta(self) -> Event:
        rng, old = self._book_rng, self._book
        new = self._book_around(self._mid(), old, rng)
        # Orders come and go at resting levels too: resize one or two of them.
        for _ in range(rng.randint(1, 2)):
            side = new.bids if rng.random() < 0.5 else new.asks
            level = rng.choice(sorted(side))
            size = self._level_size(rng, level)
            if size == side[level]:
                size = round(size + 10.0**-self._profile.size_decimals, 9)
            side[level] = size
        self._book = new
        return self._emit(
            Kind.ORDERBOOK,
            self._book_message(
                _diff(old.bids, new.bids, descending=True),
                _diff(old.asks, new.asks, descending=False),
                reset=False,
            ),
        )

    def _book_message(
        self, bids: Iterable[tuple[int, float]], asks: Iterable[tuple[int, float]], reset: bool
    ) -> Message:
        return {
            "T": WIRE_TYPE[Kind.ORDERBOOK],
            "S": self.symbol,
            "t": EpochNanos(self._clock.now()),
            "b": [{"p": self._price(p), "s": s} for p, s in bids],
            "a": [{"p": self._price(p), "s": s} for p, s in asks],
            "r": reset,
        }


def _cancel(trade: Message, rng: random.Random) -> Message:
    """A cancel ("C") or an error ("E", reported in error): either way the trade is void."""
    action = "C" if rng.random() < 0.8 else "E"
    return {
        "T": WIRE_TYPE[Kind.TRADE_CANCEL],
        "S": trade["S"],
        "i": trade["i"],
        "x": trade["x"],
        "p": trade["p"],
        "s": trade["s"],
        "a": action,
        "z": trade["z"],
    }


def _status_body(
    symbol: str, code: str, message: str, reason: str, reason_message: str, tape: str
) -> Message:
    return {
        "T": WIRE_TYPE[Kind.TRADING_STATUS],
        "S": symbol,
        "sc": code,
        "sm": message,
        "rc": reason,
        "rm": reason_message,
        "z": tape,
    }


def _diff(
    old: dict[int, float], new: dict[int, float], *, descending: bool
) -> list[tuple[int, float]]:
    """Changed and new levels with their size; removed levels with size 0 (Alpaca's way)."""
    changes = {price: 0.0 for price in old if price not in new}
    changes.update({price: size for price, size in new.items() if old.get(price) != size})
    return sorted(changes.items(), reverse=descending)


def _cumulative(weights: Iterable[float]) -> Iterable[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total
