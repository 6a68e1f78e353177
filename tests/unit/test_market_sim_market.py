"""The simulated market on its own: determinism, trade ids, bar arithmetic, the order book."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import pytest

from tickpipe_market_sim.clock import EpochNanos, EventClock
from tickpipe_market_sim.market import (
    CORRECTED_ID_BASE,
    AmendmentRates,
    Event,
    SymbolMarket,
)
from tickpipe_market_sim.protocol import Kind, Message
from tickpipe_market_sim.universe import (
    IEX_VENUES,
    SIP_VENUES,
    AssetClass,
    profile_for,
)

STOCK_KINDS = frozenset(Kind) - {Kind.ORDERBOOK}
ALL_KINDS = frozenset(Kind)
START_NS = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def fake_clock(step_ns: int = 10_000_017) -> EventClock:
    """Deterministic wall clock, so two runs can be compared field by field."""
    return EventClock(itertools.count(START_NS, step_ns).__next__)


def make_market(
    symbol: str = "AAPL",
    asset_class: AssetClass = AssetClass.STOCK,
    *,
    seed: int = 7,
    venues: Sequence[tuple[str, float]] = SIP_VENUES,
    steps_per_bar: int = 5,
    max_events: int = 0,
    clock: EventClock | None = None,
    time_windows: bool = False,
    amendments: AmendmentRates | None = None,
) -> SymbolMarket:
    return SymbolMarket(
        profile=profile_for(symbol, asset_class),
        venues=venues,
        seed=seed,
        clock=clock or fake_clock(),
        steps_per_bar=steps_per_bar,
        bar_interval_ns=SECOND,
        max_events=max_events,
        time_windows=time_windows,
        amendments=amendments,
    )


def run(market: SymbolMarket, steps: int, wanted: Iterable[Kind] = STOCK_KINDS) -> list[Event]:
    wanted = frozenset(wanted)
    return [event for _ in range(steps) for event in market.advance(wanted)]


def bodies(events: Iterable[Event], kind: Kind) -> list[Message]:
    return [e.body for e in events if e.kind is kind]


def without_time(messages: Iterable[Message]) -> list[Message]:
    return [{k: v for k, v in m.items() if k != "t"} for m in messages]


def test_same_seed_gives_the_same_market() -> None:
    first = run(make_market(seed=11), 120)
    second = run(make_market(seed=11), 120)
    assert first == second
    assert len(bodies(first, Kind.TRADE)) == 120


def test_another_seed_gives_another_walk() -> None:
    prices_a = [m["p"] for m in bodies(run(make_market(seed=1), 100), Kind.TRADE)]
    prices_b = [m["p"] for m in bodies(run(make_market(seed=2), 100), Kind.TRADE)]
    assert prices_a != prices_b


def test_the_walk_moves_and_stays_plausible() -> None:
    quotes = bodies(run(make_market("MSFT"), 5000, {Kind.QUOTE}), Kind.QUOTE)
    mids = [(q["bp"] + q["ap"]) / 2 for q in quotes]
    assert len(set(mids)) > 100, "the price must actually move"
    assert all(0.8 * 420 < mid < 1.2 * 420 for mid in mids)
    assert all(q["bp"] < q["ap"] for q in quotes)


def test_a_kind_does_not_depend_on_what_else_is_subscribed() -> None:
    # Same clock spacing per event would differ, so timestamps are left out.
    only_quotes = bodies(run(make_market(), 60, {Kind.QUOTE}), Kind.QUOTE)
    with_everything = bodies(run(make_market(), 60, STOCK_KINDS), Kind.QUOTE)
    assert without_time(only_quotes) == without_time(with_everything)


def test_trade_ids_start_at_one_and_increase_by_one() -> None:
    market = make_market()
    events = run(market, 30, {Kind.TRADE})
    # A pause in trade subscriptions (only quotes wanted) consumes no trade ids.
    events += run(market, 10, {Kind.QUOTE})
    events += run(market, 30, {Kind.TRADE})
    ids = [m["i"] for m in bodies(events, Kind.TRADE)]
    assert ids == list(range(1, 61))


def test_stock_trades_and_quotes_look_like_alpacas() -> None:
    events = run(make_market("AAPL"), 300)
    trades, quotes = bodies(events, Kind.TRADE), bodies(events, Kind.QUOTE)
    venue_codes = {code for code, _ in SIP_VENUES}
    for trade in trades:
        assert list(trade) == ["T", "S", "i", "x", "p", "s", "c", "t", "z"]
        assert trade["T"] == "t"
        assert trade["S"] == "AAPL"
        assert trade["x"] in venue_codes
        assert trade["p"] == round(trade["p"], 2), "stock prices are whole cents"
        assert isinstance(trade["s"], int)
        assert trade["s"] > 0
        assert trade["c"][0] == "@"
        assert ("I" in trade["c"]) == (trade["s"] % 100 != 0), "odd lots carry condition I"
        assert trade["z"] == "C"  # Nasdaq-listed
        assert isinstance(trade["t"], EpochNanos)
    assert {t["s"] % 100 == 0 for t in trades} == {True, False}, "round and odd lots"
    assert len({t["x"] for t in trades}) > 3
    for quote in quotes:
        assert list(quote) == ["T", "S", "bx", "bp", "bs", "ax", "ap", "as", "c", "t", "z"]
        assert quote["bp"] < quote["ap"]
        assert quote["bs"] > 0
        assert quote["as"] > 0
    assert make_market("SPY").advance({Kind.TRADE})[0].body["z"] == "B"


def test_the_iex_feed_only_has_iex_prints() -> None:
    events = run(make_market(venues=IEX_VENUES), 100)
    assert {m["x"] for m in bodies(events, Kind.TRADE)} == {"V"}
    assert {m["bx"] for m in bodies(events, Kind.QUOTE)} == {"V"}


def test_crypto_trades_and_quotes_look_like_alpacas() -> None:
    events = run(make_market("BTC/USD", AssetClass.CRYPTO, venues=()), 300, ALL_KINDS)
    trades, quotes = bodies(events, Kind.TRADE), bodies(events, Kind.QUOTE)
    for trade in trades:
        assert list(trade) == ["T", "S", "p", "s", "t", "i", "tks"]
        assert trade["tks"] in ("B", "S")
        assert isinstance(trade["s"], float)
        assert 0 < trade["s"] < 10
        assert trade["s"] == round(trade["s"], 6)
    assert {t["tks"] for t in trades} == {"B", "S"}
    assert any(t["s"] != round(t["s"], 2) for t in trades), "fractional sizes"
    for quote in quotes:
        assert list(quote) == ["T", "S", "bp", "bs", "ap", "as", "t"]
        assert quote["bp"] < quote["ap"]
    assert 50_000 < trades[0]["p"] < 80_000


def _trade_windows(trades: Sequence[Message], size: int) -> list[Sequence[Message]]:
    return [trades[i : i + size] for i in range(0, len(trades), size)]


def test_bars_aggregate_exactly_the_trades_of_their_window() -> None:
    # One trade per step, 0.25 s apart: a 5-step window spans more than the 1 s interval,
    # as it does in real time (steps per bar = interval x rate, rounded up).
    market = make_market(steps_per_bar=5, clock=fake_clock(step_ns=250_000_017))
    events = run(market, 41, {Kind.BAR, Kind.TRADE})
    trades, bars = bodies(events, Kind.TRADE), bodies(events, Kind.BAR)
    assert len(trades) == 41
    assert len(bars) == 8  # the 9th window (trade 41) is still open
    for bar, window in zip(bars, _trade_windows(trades, 5), strict=False):
        assert list(bar) == ["T", "S", "o", "h", "l", "c", "v", "t", "n", "vw"]
        assert bar["o"] == window[0]["p"]
        assert bar["c"] == window[-1]["p"]
        assert bar["h"] == max(t["p"] for t in window)
        assert bar["l"] == min(t["p"] for t in window)
        assert bar["v"] == sum(t["s"] for t in window)
        assert bar["n"] == len(window)
        vwap = sum(t["p"] * t["s"] for t in window) / bar["v"]
        assert bar["vw"] == pytest.approx(vwap, rel=1e-12)
        # Stamped with the start of its interval, at or before its first trade.
        assert bar["t"].ns % SECOND == 0
        assert bar["t"].ns <= window[0]["t"].ns
    stamps = [b["t"].ns for b in bars]
    assert stamps == sorted(set(stamps)), "bar timestamps are unique and increasing"


def test_updated_bars_revise_a_bar_with_one_late_print() -> None:
    events = run(make_market(seed=3, steps_per_bar=2), 400, STOCK_KINDS)
    bars = {m["t"]: m for m in bodies(events, Kind.BAR)}
    updates = bodies(events, Kind.UPDATED_BAR)
    assert 0 < len(updates) < len(bars), "some bars, not all, get a late print"
    for update in updates:
        bar = bars[update["t"]]
        assert update["T"] == "u"
        assert update["n"] == bar["n"] + 1
        assert 0 < update["v"] - bar["v"] < 100, "an odd-lot late print"
        assert (update["o"], update["c"]) == (bar["o"], bar["c"])


def test_daily_bars_accumulate_the_day() -> None:
    events = run(make_market(seed=3, steps_per_bar=3), 90, STOCK_KINDS)
    trades_so_far = volume_so_far = 0
    late_bars: dict[EpochNanos, Message] = {}
    dailies = 0
    for event in events:
        body = event.body
        if event.kind is Kind.TRADE:
            trades_so_far += 1
            volume_so_far += body["s"]
        elif event.kind is Kind.BAR:
            late_bars[body["t"]] = body
        elif event.kind is Kind.UPDATED_BAR:
            trades_so_far += 1
            volume_so_far += body["v"] - late_bars[body["t"]]["v"]
        elif event.kind is Kind.DAILY_BAR:
            dailies += 1
            assert body["n"] == trades_so_far
            assert body["v"] == volume_so_far
            assert body["t"].ns % (86_400 * SECOND) == 0, "stamped with the UTC day"
    assert dailies == 29  # windows close at steps 3, 6, ... 87


def test_max_events_caps_each_kind_separately() -> None:
    market = make_market(max_events=7, steps_per_bar=2)
    events = run(market, 50, STOCK_KINDS)
    assert [m["i"] for m in bodies(events, Kind.TRADE)] == list(range(1, 8))
    assert len(bodies(events, Kind.QUOTE)) == 7
    assert len(bodies(events, Kind.BAR)) == 4  # ceil(7 trades / 2 per bar)
    assert market.generated[Kind.TRADE] == 7
    assert run(market, 10, STOCK_KINDS) == [], "capped kinds stay silent"


def _apply(book: dict[float, float], levels: Iterable[Message]) -> None:
    for level in levels:
        if level["s"] == 0:
            del book[level["p"]]
        else:
            book[level["p"]] = level["s"]


def test_orderbook_deltas_rebuild_the_full_book() -> None:
    market = make_market("ETH/USD", AssetClass.CRYPTO, venues=())
    start = market.book_snapshot().body
    assert start["r"] is True
    assert len(start["b"]) == len(start["a"]) == 10
    bids = {level["p"]: level["s"] for level in start["b"]}
    asks = {level["p"]: level["s"] for level in start["a"]}
    deltas = bodies(run(market, 300, {Kind.ORDERBOOK}), Kind.ORDERBOOK)
    assert len(deltas) == 300
    for delta in deltas:
        assert delta["r"] is False
        assert delta["b"] or delta["a"], "every delta changes something"
        assert [lv["p"] for lv in delta["b"]] == sorted(
            (lv["p"] for lv in delta["b"]), reverse=True
        )
        assert [lv["p"] for lv in delta["a"]] == sorted(lv["p"] for lv in delta["a"])
        _apply(bids, delta["b"])
        _apply(asks, delta["a"])
        assert max(bids) < min(asks), "the book is never crossed"
    end = market.book_snapshot().body
    assert {lv["p"]: lv["s"] for lv in end["b"]} == bids
    assert {lv["p"]: lv["s"] for lv in end["a"]} == asks
    assert [lv["p"] for lv in end["b"]] == sorted(bids, reverse=True)
    assert market.generated[Kind.ORDERBOOK] == 300, "snapshots are not counted as events"


def test_stocks_have_no_order_book() -> None:
    assert bodies(run(make_market(), 10, ALL_KINDS), Kind.ORDERBOOK) == []


def test_real_clock_timestamps_increase_and_keep_nanoseconds() -> None:
    events = run(make_market(clock=EventClock()), 200)
    stamps = [e.body["t"].ns for e in events if e.kind in (Kind.TRADE, Kind.QUOTE)]
    assert stamps == sorted(set(stamps))
    assert all(ns % 1000 != 0 for ns in stamps)


def test_event_clock_fixes_a_microsecond_clock() -> None:
    # macOS and some VMs only give microseconds, and repeat values under load.
    clock = EventClock(iter([5_000_000, 5_000_000, 5_001_000, 4_000_000]).__next__)
    stamps = [clock.now() for _ in range(4)]
    assert stamps == sorted(set(stamps))
    assert all(ns % 1000 != 0 for ns in stamps)


def test_symbol_profiles() -> None:
    assert profile_for("AAPL", AssetClass.STOCK).start_price == 190.0
    unknown = profile_for("ZZZT", AssetClass.STOCK)
    assert unknown == profile_for("ZZZT", AssetClass.STOCK), "stable across calls and runs"
    assert 10 <= unknown.start_price <= 500
    assert unknown.tape in ("A", "B", "C")
    doge = profile_for("DOGE/USD", AssetClass.CRYPTO)
    assert doge.price_decimals == 7
    assert doge.size_decimals == 1
    btc = profile_for("BTC/USD", AssetClass.CRYPTO)
    assert (btc.price_decimals, btc.size_decimals) == (2, 6)
    other = profile_for("XYZ/USD", AssetClass.CRYPTO)
    assert 0.1 <= other.start_price <= 1000
    assert math.isfinite(other.start_price)


@pytest.mark.parametrize("wanted", [STOCK_KINDS, frozenset({Kind.TRADE, Kind.QUOTE})])
def test_a_capped_market_says_when_it_has_finished(wanted: frozenset[Kind]) -> None:
    market = make_market(max_events=12)
    events: list[Event] = []
    steps = 0
    while not market.finished(wanted):
        assert steps < 1000, "never finished"
        events.extend(market.advance(wanted))
        steps += 1
    assert len(bodies(events, Kind.TRADE)) == len(bodies(events, Kind.QUOTE)) == 12
    assert run(market, 200, wanted) == []  # nothing more, ever
    assert not make_market().finished(wanted)  # an uncapped market never finishes


def test_time_windows_hold_exactly_the_trades_of_their_interval_across_a_pause() -> None:
    """The live hub's bars: a pause in the steps (nobody subscribed, a stall) does not put
    trades from both sides of it into one bar."""
    now = [START_NS]

    def source() -> int:
        now[0] += 130_000_017
        return now[0]

    market = make_market(clock=EventClock(source), time_windows=True)
    events = run(market, 25, {Kind.BAR, Kind.TRADE})
    now[0] += 7 * SECOND + 400_000_000  # the pause
    events += run(market, 25, {Kind.BAR, Kind.TRADE})
    trades, bars = bodies(events, Kind.TRADE), bodies(events, Kind.BAR)
    assert len(bars) >= 5
    for bar in bars:
        t = bar["t"].ns
        inside = [m for m in trades if t <= m["t"].ns < t + SECOND]
        assert t % SECOND == 0
        assert bar["n"] == len(inside) > 0
        assert bar["v"] == sum(m["s"] for m in inside)
        assert (bar["o"], bar["c"]) == (inside[0]["p"], inside[-1]["p"])
    covered = sum(bar["n"] for bar in bars)
    last_t = bars[-1]["t"].ns
    assert covered == len([m for m in trades if m["t"].ns < last_t + SECOND])
    # Each bar comes after the last trade of its interval and before the next one.
    order = [(e.kind, e.body["t"].ns) for e in events if e.kind in (Kind.BAR, Kind.TRADE)]
    for i, (kind, t) in enumerate(order):
        if kind is Kind.BAR:
            assert order[i - 1][1] < t + SECOND <= order[i + 1][1]


def test_time_windows_close_the_last_bar_at_the_trade_cap() -> None:
    market = make_market(max_events=4, time_windows=True)
    events = run(market, 10, {Kind.BAR, Kind.TRADE})
    bars = bodies(events, Kind.BAR)
    assert sum(bar["n"] for bar in bars) == 4, "every capped trade is in a closed bar"


AMENDED = frozenset({Kind.TRADE_CORRECTION, Kind.TRADE_CANCEL, Kind.TRADING_STATUS, Kind.LULD})
OFTEN = AmendmentRates(correction=0.1, cancel=0.05, halt=0.02)


def test_amendments_and_statuses_leave_the_other_kinds_as_they_were() -> None:
    """The same seed gives the same trades, quotes and bars whether the market amends its
    trades often, as by default, or never (timestamps aside: reports take clock reads)."""
    runs = [
        run(make_market(seed=5, steps_per_bar=4, amendments=rates), 3000, STOCK_KINDS)
        for rates in (AmendmentRates(0, 0, 0), AmendmentRates(), OFTEN)
    ]
    plain = [(e.kind, e.body) for e in runs[0]]
    assert {kind for kind, _ in plain} & AMENDED == {Kind.TRADING_STATUS, Kind.LULD}
    for other in runs[1:]:
        kept = [e for e in other if e.kind not in AMENDED]
        assert [e.kind for e in kept] == [e.kind for e in runs[0] if e.kind not in AMENDED]
        for kind in STOCK_KINDS - AMENDED:
            assert without_time(bodies(kept, kind)) == without_time(bodies(runs[0], kind)), kind
    assert len(bodies(runs[2], Kind.TRADE_CORRECTION)) > len(bodies(runs[1], Kind.TRADE_CORRECTION))


def test_corrections_and_cancels_amend_earlier_trades_as_alpacas_do() -> None:
    events = run(make_market(seed=9, amendments=OFTEN), 1000, STOCK_KINDS)
    assert events == run(make_market(seed=9, amendments=OFTEN), 1000, STOCK_KINDS)
    trades: dict[int, Message] = {}
    amended: set[int] = set()
    corrections = cancels = 0
    for event in events:
        body = event.body
        if event.kind is Kind.TRADE:
            trades[body["i"]] = body
        elif event.kind is Kind.TRADE_CORRECTION:
            corrections += 1
            assert list(body) == [
                "T",
                "S",
                "x",
                "oi",
                "op",
                "os",
                "oc",
                "ci",
                "cp",
                "cs",
                "cc",
                "z",
                "t",
            ]
            trade = trades[body["oi"]]  # a trade already printed
            assert (body["x"], body["z"], body["op"], body["os"], body["oc"]) == (
                trade["x"], trade["z"], trade["p"], trade["s"], trade["c"]
            )  # fmt: skip
            assert body["ci"] == CORRECTED_ID_BASE + body["oi"]
            assert (body["cp"], body["cs"]) != (body["op"], body["os"])
            assert body["cs"] > 0
            assert body["t"].ns > trade["t"].ns
            assert body["oi"] not in amended, "a trade is amended at most once"
            amended.add(body["oi"])
        elif event.kind is Kind.TRADE_CANCEL:
            cancels += 1
            assert list(body) == ["T", "S", "i", "x", "p", "s", "a", "z", "t"]
            trade = trades[body["i"]]
            assert (body["x"], body["z"], body["p"], body["s"]) == (
                trade["x"], trade["z"], trade["p"], trade["s"]
            )  # fmt: skip
            assert body["a"] in ("C", "E")
            assert body["i"] not in amended
            amended.add(body["i"])
    assert corrections > 50
    assert cancels > 20
    assert sorted(trades) == list(range(1, 1001)), "trade ids stay contiguous"


def test_statuses_and_luld_bands_frame_the_trading() -> None:
    events = run(make_market(seed=9, amendments=OFTEN), 2000, STOCK_KINDS)
    # The first trade brings the first status and band, right after it.
    assert [e.kind for e in events[:3]] == [Kind.TRADE, Kind.TRADING_STATUS, Kind.LULD]
    statuses = bodies(events, Kind.TRADING_STATUS)
    assert statuses[0]["sc"] == "T"
    for status in statuses:
        assert list(status) == ["T", "S", "sc", "sm", "rc", "rm", "z", "t"]
        assert status["sc"] in ("T", "H")
    codes = "".join(s["sc"] for s in statuses[1:])
    assert "H" in codes
    # Every halt is resumed (a halt may begin again before the last one ended).
    assert codes.count("H") == codes.count("T") or codes.count("H") == codes.count("T") + 1
    last_band: Message | None = None
    bands = 0
    for event in events:
        if event.kind is Kind.LULD:
            bands += 1
            last_band = event.body
            assert list(last_band) == ["T", "S", "u", "d", "i", "t", "z"]
            assert last_band["d"] < last_band["u"]
        elif event.kind is Kind.TRADE and last_band is not None:
            assert last_band["d"] < event.body["p"] < last_band["u"]
    assert bands > 1, "the price moved enough for a new band"


def test_crypto_has_none_of_the_stock_reports() -> None:
    events = run(
        make_market("BTC/USD", AssetClass.CRYPTO, venues=(), amendments=OFTEN), 500, ALL_KINDS
    )
    assert {e.kind for e in events} & AMENDED == set()
