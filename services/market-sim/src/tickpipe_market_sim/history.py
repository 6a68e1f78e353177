"""What happened in the simulated market, kept for Alpaca's historical REST API.

The markets trade whether or not anyone listens (see ``hub``); every trade, quote and bar
they make (and every correction, cancel/error, trading status and LULD band) is recorded here,
and an updated bar replaces the bar it revises, so the history holds each bar as it finally
stood. A subscriber who missed a stretch (a disconnect, a mute, a late start) can fetch
exactly what happened meanwhile.

Bounded by two settings: SIM_HISTORY_SECONDS forgets events older than that, and
SIM_HISTORY_EVENTS keeps at most that many per (feed, symbol, kind). A series is two
parallel lists (timestamps, wire bodies) with a moving start, so recording is an append
and a range query is two bisections; forgotten entries are compacted away in bulk.

Timestamps are unique within a series (the event clock strictly increases; a bar's ``t``
is strictly after its predecessor's), so a timestamp is a stable cursor for paging even
while old entries are forgotten.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tickpipe_market_sim.market import Event
from tickpipe_market_sim.protocol import Kind, Message

# Kinds the history keeps (the REST API serves trades, quotes and bars; daily bars are
# aggregated from the bars; order books have no history endpoint). The stock trades'
# corrections and cancel/errors, trading statuses and LULD bands are kept too, each as a series
# of its own (no REST endpoint serves them; /stats counts them, and tests reconcile them).
RECORDED = frozenset(
    {
        Kind.TRADE,
        Kind.QUOTE,
        Kind.BAR,
        Kind.TRADE_CORRECTION,
        Kind.TRADE_CANCEL,
        Kind.TRADING_STATUS,
        Kind.LULD,
    }
)
# Compact a series once this many entries at its front are forgotten.
COMPACT_AT = 4096


@dataclass(slots=True)
class Series:
    """One (feed, symbol, kind): timestamps and bodies in time order from ``start``."""

    times: list[int] = field(default_factory=list)
    bodies: list[Message] = field(default_factory=list)
    start: int = 0

    def __len__(self) -> int:
        return len(self.times) - self.start

    def append(self, t_ns: int, body: Message) -> None:
        self.times.append(t_ns)
        self.bodies.append(body)

    def replace(self, t_ns: int, body: Message) -> None:
        """An updated bar: the entry stamped ``t_ns`` becomes ``body`` (if still kept)."""
        i = bisect.bisect_left(self.times, t_ns, self.start)
        if i < len(self.times) and self.times[i] == t_ns:
            self.bodies[i] = body

    def forget(self, older_than_ns: int, keep: int) -> None:
        """Drop entries stamped before ``older_than_ns`` and beyond the newest ``keep``."""
        start = self.start
        end = len(self.times)
        if keep and end - start > keep:
            start = end - keep
        while start < end and self.times[start] < older_than_ns:
            start += 1
        self.start = start
        if start >= COMPACT_AT and start * 2 >= end:
            del self.times[:start]
            del self.bodies[:start]
            self.start = 0

    def between(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """Index range of the entries with ``start_ns <= t <= end_ns``."""
        lo = bisect.bisect_left(self.times, start_ns, self.start)
        hi = bisect.bisect_right(self.times, end_ns, lo)
        return lo, hi

    def oldest(self) -> int | None:
        return self.times[self.start] if len(self) else None


@dataclass(frozen=True, slots=True)
class HistoryBounds:
    seconds: float
    events: int  # per series; 0: no count bound


class History:
    """Every recorded series, by feed path, kind and symbol."""

    def __init__(self, bounds: HistoryBounds, now_ns: Callable[[], int]) -> None:
        self.bounds = bounds
        self._window_ns = round(bounds.seconds * 1e9)
        self._now_ns = now_ns
        self._series: dict[tuple[str, Kind, str], Series] = {}

    def record(self, path: str, event: Event) -> None:
        kind = event.kind
        if kind is Kind.UPDATED_BAR:
            series = self._series.get((path, Kind.BAR, event.symbol))
            if series is not None:
                series.replace(event.body["t"].ns, _as_bar(event.body))
            return
        if kind not in RECORDED:
            return
        key = (path, kind, event.symbol)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series()
        series.append(event.body["t"].ns, event.body)
        series.forget(self._now_ns() - self._window_ns, self.bounds.events)

    def series(self, path: str, kind: Kind, symbol: str) -> Series | None:
        return self._series.get((path, kind, symbol))

    def symbols(self, path: str, kind: Kind) -> Iterator[str]:
        return (s for (p, k, s) in self._series if p == path and k is kind)

    def snapshot(self) -> dict[str, Any]:
        """For /stats: the bounds, and per feed the entries kept and the oldest one."""
        feeds: dict[str, dict[str, Any]] = {}
        for (path, kind, _), series in self._series.items():
            entry = feeds.setdefault(path, {}).setdefault(
                kind.value, {"events": 0, "oldest_ns": None}
            )
            entry["events"] += len(series)
            oldest = series.oldest()
            if oldest is not None and (entry["oldest_ns"] is None or oldest < entry["oldest_ns"]):
                entry["oldest_ns"] = oldest
        return {
            "seconds": self.bounds.seconds,
            "events_per_series": self.bounds.events,
            "kept": feeds,
        }


def _as_bar(body: Message) -> Message:
    """An updated bar stored as the bar it revises (its ``T`` says ``b``)."""
    return {**body, "T": "b"}
