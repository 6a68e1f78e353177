"""Alpaca's historical market-data REST API, serving what happened in the simulated market.

The routes and shapes are Alpaca's (``data.alpaca.markets``), so alpaca-py's
``StockHistoricalDataClient`` and ``CryptoHistoricalDataClient`` work against the
simulator with only ``url_override`` changed:

- ``GET /v2/stocks/{trades,quotes,bars}?symbols=A,B`` → ``{"trades": {"A": [...]},
  "next_page_token": ...}``; the single-symbol ``/v2/stocks/{symbol}/trades`` →
  ``{"trades": [...], "symbol": "A", "next_page_token": ...}``; ``feed`` (iex, sip,
  delayed_sip; default iex) picks the stock feed whose history is read.
- ``GET /v1beta3/crypto/us/{trades,quotes,bars}?symbols=BTC/USD`` (multi-symbol only).
- ``start``/``end`` (RFC 3339 or a date; both inclusive; default: today's UTC midnight and
  now), ``limit`` 1-10,000 (default 1,000) across all symbols of a page, ``sort`` asc or
  desc, ``page_token`` from the previous page's ``next_page_token`` (null on the last page).
  Pages list symbols in name order, each symbol's items in time order.
- Bars: ``timeframe`` like 1Min, 5Min, 1Hour, 1Day (Min/T, Hour/H, Day/D, Week/W). Bars of
  the simulator's own interval (SIM_BAR_INTERVAL) are served as streamed, with late prints
  applied; longer timeframes aggregate them, which needs a multiple of that interval.
  Days are UTC days here (Alpaca's daily bars follow New York's trading day).

Timestamps are RFC 3339 with nanoseconds and trailing zeros trimmed, as Alpaca's Go
servers write them. Stock requests need the ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``
headers (401 without, 403 when SIM_API_KEY is set and they are wrong); crypto needs none,
as on Alpaca. SIM_HISTORY_RATE_LIMIT bounds requests per minute per key: every response
then carries ``X-RateLimit-Limit/-Remaining/-Reset`` and an excess request gets 429.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import http
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tickpipe_common.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from tickpipe_market_sim.auth import KEY_HEADER, SECRET_HEADER, Authenticator
from tickpipe_market_sim.clock import EpochNanos
from tickpipe_market_sim.history import History
from tickpipe_market_sim.protocol import Kind, Message
from tickpipe_market_sim.universe import CRYPTO_PATH

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
STOCK_FEEDS = {"iex": "/v2/iex", "sip": "/v2/sip", "delayed_sip": "/v2/delayed_sip"}
KINDS = {"trades": Kind.TRADE, "quotes": Kind.QUOTE, "bars": Kind.BAR}
CRYPTO_PREFIX = "/v1beta3/crypto/us/"
STOCK_PREFIX = "/v2/stocks/"
DAY_NS = 86_400 * 10**9
TIMEFRAME_UNITS = {
    "Min": 60 * 10**9,
    "T": 60 * 10**9,
    "Hour": 3600 * 10**9,
    "H": 3600 * 10**9,
    "Day": DAY_NS,
    "D": DAY_NS,
    "Week": 7 * DAY_NS,
    "W": 7 * DAY_NS,
}
_TIMEFRAME = re.compile(r"^([1-9]\d{0,4})(Min|T|Hour|H|Day|D|Week|W)$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAIVE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$")
RATE_WINDOW = 60.0

# (status, content type, body, extra headers)
Reply = tuple[http.HTTPStatus, str, bytes, list[tuple[str, str]]]


class ApiError(Exception):
    def __init__(self, status: http.HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Query:
    feed_path: str
    kind: Kind
    symbols: tuple[str, ...]
    single: bool
    start_ns: int
    end_ns: int
    limit: int
    descending: bool
    cursor: tuple[str, int] | None
    timeframe_ns: int


@dataclass(slots=True)
class _View:
    """Items ``lo..hi`` of parallel lists, walked forwards or backwards."""

    times: Sequence[int]
    bodies: Sequence[Message]
    lo: int
    hi: int
    descending: bool

    def __len__(self) -> int:
        return max(0, self.hi - self.lo)

    def at(self, i: int) -> tuple[int, Message]:
        j = self.hi - 1 - i if self.descending else self.lo + i
        return self.times[j], self.bodies[j]


class RateLimiter:
    """A fixed one-minute window per key, as Alpaca counts requests per minute."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self._limit = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def take(self, who: str) -> tuple[bool, list[tuple[str, str]]]:
        """Count one request; (allowed, X-RateLimit-* headers)."""
        if not self._limit:
            return True, []
        now = self._clock()
        began, used = self._windows.get(who, (now, 0))
        if now - began >= RATE_WINDOW:
            began, used = now, 0
        allowed = used < self._limit
        if allowed:
            used += 1
        self._windows[who] = (began, used)
        return allowed, [
            ("X-RateLimit-Limit", str(self._limit)),
            ("X-RateLimit-Remaining", str(self._limit - used)),
            ("X-RateLimit-Reset", str(int(began + RATE_WINDOW))),
        ]


class HistoricalApi:
    def __init__(
        self,
        history: History,
        auth: Authenticator,
        *,
        bar_interval_ns: int,
        rate_limiter: RateLimiter,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._history = history
        self._auth = auth
        self._bar_interval_ns = bar_interval_ns
        self._rate = rate_limiter
        self._now_ns = now_ns

    @staticmethod
    def serves(path: str) -> bool:
        return path.startswith((STOCK_PREFIX, CRYPTO_PREFIX))

    def handle(self, target: str, headers: Mapping[str, str]) -> Reply:
        url = urlsplit(target)
        extra: list[tuple[str, str]] = []
        try:
            crypto = url.path.startswith(CRYPTO_PREFIX)
            who = self._authorise(headers, crypto)
            allowed, extra = self._rate.take(who)
            if not allowed:
                raise ApiError(http.HTTPStatus.TOO_MANY_REQUESTS, "too many requests.")
            query = self._parse(url.path, parse_qs(url.query, keep_blank_values=True))
            body = self._answer(query)
        except ApiError as exc:
            payload = json.dumps({"message": exc.message}).encode()
            return exc.status, "application/json", payload, extra
        return http.HTTPStatus.OK, "application/json", json.dumps(body).encode(), extra

    # --- request ---------------------------------------------------------------------------

    def _authorise(self, headers: Mapping[str, str], crypto: bool) -> str:
        key, secret = headers.get(KEY_HEADER), headers.get(SECRET_HEADER)
        if key is None or secret is None:
            if crypto:
                return "anonymous"  # Alpaca serves crypto history without keys
            raise ApiError(http.HTTPStatus.UNAUTHORIZED, "unauthorized")
        if not self._auth.credentials_ok(key, secret):
            raise ApiError(http.HTTPStatus.FORBIDDEN, "forbidden")
        return key

    def _parse(self, path: str, params: Mapping[str, list[str]]) -> Query:
        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values and values[-1] != "" else None

        if path.startswith(CRYPTO_PREFIX):
            feed_path, rest = CRYPTO_PATH, path[len(CRYPTO_PREFIX) :]
        else:
            feed = one("feed") or "iex"
            if feed not in STOCK_FEEDS:
                raise ApiError(http.HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid feed: {feed}")
            feed_path, rest = STOCK_FEEDS[feed], path[len(STOCK_PREFIX) :]
        parts = rest.split("/")
        single = len(parts) == 2 and not path.startswith(CRYPTO_PREFIX)
        if not (len(parts) == 1 or single) or parts[-1] not in KINDS:
            raise ApiError(http.HTTPStatus.NOT_FOUND, "not found")
        kind = KINDS[parts[-1]]
        if single:
            symbols: tuple[str, ...] = (parts[0],)
        else:
            listed = one("symbols")
            if listed is None:
                raise ApiError(http.HTTPStatus.BAD_REQUEST, "missing symbols")
            symbols = tuple(sorted(dict.fromkeys(s for s in listed.split(",") if s)))
        now = self._now_ns()
        start_text, end_text = one("start"), one("end")
        start = _time(start_text, "start") if start_text else now - now % DAY_NS
        end = _time(end_text, "end") if end_text else now
        limit = _limit(one("limit"))
        sort = one("sort") or "asc"
        if sort not in ("asc", "desc"):
            raise ApiError(http.HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid sort: {sort}")
        token = one("page_token")
        timeframe = self._timeframe(one("timeframe")) if kind is Kind.BAR else 0
        return Query(
            feed_path=feed_path,
            kind=kind,
            symbols=symbols,
            single=single,
            start_ns=start,
            end_ns=end,
            limit=limit,
            descending=sort == "desc",
            cursor=_cursor(token) if token else None,
            timeframe_ns=timeframe,
        )

    def _timeframe(self, text: str | None) -> int:
        if text is None:
            raise ApiError(http.HTTPStatus.BAD_REQUEST, "missing timeframe")
        match = _TIMEFRAME.match(text)
        if match is None:
            raise ApiError(http.HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid timeframe: {text}")
        ns = int(match.group(1)) * TIMEFRAME_UNITS[match.group(2)]
        if ns % self._bar_interval_ns:
            raise ApiError(
                http.HTTPStatus.UNPROCESSABLE_ENTITY,
                f"timeframe {text} is not a multiple of the simulator's bar interval "
                f"({self._bar_interval_ns / 1e9:g} s, SIM_BAR_INTERVAL)",
            )
        return ns

    # --- answer ------------------------------------------------------------------------------

    def _views(self, query: Query) -> Iterator[tuple[str, _View]]:
        """Each symbol's items in the requested range and order, from the cursor on."""
        for symbol in query.symbols:  # by name, whatever the sort of the items
            if query.cursor is not None and symbol < query.cursor[0]:
                continue
            view = self._view(query, symbol)
            if query.cursor is not None and symbol == query.cursor[0]:
                view = _from_cursor(view, query.cursor[1])
            yield symbol, view

    def _view(self, query: Query, symbol: str) -> _View:
        series = self._history.series(query.feed_path, query.kind, symbol)
        if series is None:
            return _View((), (), 0, 0, query.descending)
        lo, hi = series.between(query.start_ns, query.end_ns)
        if query.kind is Kind.BAR and query.timeframe_ns != self._bar_interval_ns:
            times, bodies = _aggregate(
                series.times[lo:hi], series.bodies[lo:hi], query.timeframe_ns, symbol
            )
            return _View(times, bodies, 0, len(times), query.descending)
        return _View(series.times, series.bodies, lo, hi, query.descending)

    def _answer(self, query: Query) -> dict[str, Any]:
        page: dict[str, list[Message]] = {}
        room = query.limit
        token: str | None = None
        for symbol, view in self._views(query):
            if room == 0:
                if len(view):
                    token = _token(symbol, view.at(0)[0])
                    break
                continue
            taken = min(room, len(view))
            if taken:
                page[symbol] = [_rest_body(view.at(i)[1]) for i in range(taken)]
                room -= taken
            if taken < len(view):
                token = _token(symbol, view.at(taken)[0])
                break
        name = next(k for k, v in KINDS.items() if v is query.kind)
        if query.single:
            symbol = query.symbols[0]
            return {name: page.get(symbol, []), "symbol": symbol, "next_page_token": token}
        return {name: page, "next_page_token": token}


def _from_cursor(view: _View, t_ns: int) -> _View:
    """The part of ``view`` from the item stamped ``t_ns`` on (in the view's order)."""
    times = view.times
    if view.descending:
        hi = bisect.bisect_right(times, t_ns, view.lo, view.hi)
        return _View(times, view.bodies, view.lo, hi, True)
    lo = bisect.bisect_left(times, t_ns, view.lo, view.hi)
    return _View(times, view.bodies, lo, view.hi, False)


def _aggregate(
    times: Sequence[int], bodies: Sequence[Message], timeframe_ns: int, symbol: str
) -> tuple[list[int], list[Message]]:
    """Bars of a longer timeframe from the simulator's bars, stamped with their start."""
    out_t: list[int] = []
    out_b: list[Message] = []
    group: list[Message] = []
    bucket = None
    for t, body in zip(times, bodies, strict=True):
        b = t - t % timeframe_ns
        if bucket is not None and b != bucket:
            out_t.append(bucket)
            out_b.append(_merge(group, bucket, symbol))
            group = []
        bucket = b
        group.append(body)
    if bucket is not None:
        out_t.append(bucket)
        out_b.append(_merge(group, bucket, symbol))
    return out_t, out_b


def _merge(bars: Sequence[Message], t_ns: int, symbol: str) -> Message:
    volume = sum(bar["v"] for bar in bars)
    notional = sum(bar["vw"] * bar["v"] for bar in bars)
    high, low = max(bar["h"] for bar in bars), min(bar["l"] for bar in bars)
    return {
        "T": "b",
        "S": symbol,
        "o": bars[0]["o"],
        "h": high,
        "l": low,
        "c": bars[-1]["c"],
        "v": volume if isinstance(volume, int) else round(volume, 9),
        "t": EpochNanos(t_ns),
        "n": sum(bar["n"] for bar in bars),
        "vw": min(max(notional / volume, low), high) if volume else 0.0,
    }


def _rest_body(body: Message) -> Message:
    """A wire message as Alpaca's REST API writes it: no ``T``/``S``, ``t`` as text."""
    out = {k: v for k, v in body.items() if k not in ("T", "S")}
    out["t"] = go_rfc3339(body["t"].ns)
    return out


def go_rfc3339(epoch_ns: int) -> str:
    """RFC 3339 with up to nine fractional digits, trailing zeros trimmed (Go's
    ``time.RFC3339Nano``, which Alpaca's servers use): ``…:56.33432Z``, ``…:00Z``."""
    text = format_rfc3339_ns(epoch_ns)  # always nine digits and Z
    head, _, fraction = text[:-1].partition(".")
    fraction = fraction.rstrip("0")
    return f"{head}.{fraction}Z" if fraction else f"{head}Z"


def _time(text: str, name: str) -> int:
    value = text
    if _DATE.match(value):
        value += "T00:00:00Z"
    elif _NAIVE.match(value):
        value += "Z"  # no offset: UTC, as Alpaca reads it
    try:
        return parse_rfc3339_ns(value)
    except ValueError:
        raise ApiError(http.HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid {name}: {text}") from None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(
            http.HTTPStatus.UNPROCESSABLE_ENTITY, f"invalid limit: {text} (1 to {MAX_LIMIT})"
        )
    return limit


def _token(symbol: str, t_ns: int) -> str:
    raw = json.dumps([symbol, t_ns], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        symbol, t_ns = json.loads(raw)
        if isinstance(symbol, str) and isinstance(t_ns, int):
            return symbol, t_ns
    except (ValueError, TypeError, binascii.Error):
        pass
    raise ApiError(http.HTTPStatus.UNPROCESSABLE_ENTITY, "invalid page token")
