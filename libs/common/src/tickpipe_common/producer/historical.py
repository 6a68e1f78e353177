"""Pages of what happened, from Alpaca's historical market-data REST API, as stream messages.

alpaca-py's ``StockHistoricalDataClient`` / ``CryptoHistoricalDataClient`` (``raw_data=True``,
``url_override`` = ``ALPACA_DATA_REST_URL``) build and send each request; its request models
(``StockTradesRequest``, ...) write the query. We page ourselves, one ``get`` per page with the
previous page's ``next_page_token``, because alpaca-py's ``get_stock_trades`` gathers every page
in memory before it returns: a long gap would be held whole, here it is one page (up to 10,000
items) at a time, each handed on before the next is asked for.

Retries are ours too. alpaca-py sleeps a fixed 3 s and tries three times on a 429; we switch that
off (``_retry = 0``) and back off capped and jittered (``tickpipe_common.backoff``), respecting
the rate limit's ``X-RateLimit-Reset`` when the answer has one. Every request has a timeout
(alpaca-py sets none, and a dead peer would hang the backfill thread for good).

Items come back in Alpaca's REST shape (no ``T``/``S``, ``t`` as RFC 3339 text with up to nine
fractional digits): each is given its wire type and symbol, so the sink normalises it exactly
like a stream message (``wire.normalise`` reads text timestamps to the nanosecond).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.enums import CryptoFeed, DataFeed
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.historical.stock import StockHistoricalDataClient
from alpaca.data.requests import (
    CryptoBarsRequest,
    CryptoQuoteRequest,
    CryptoTradesRequest,
    StockBarsRequest,
    StockQuotesRequest,
    StockTradesRequest,
)
from alpaca.data.timeframe import TimeFrame

from tickpipe_common.backoff import Backoff
from tickpipe_common.logging import get_logger
from tickpipe_common.producer.settings import ProducerSettings

log = get_logger("tickpipe_common.producer.backfill")

PAGE_LIMIT = 10_000  # Alpaca's largest page
REQUEST_TIMEOUT_SECONDS = 30.0
ATTEMPTS = 8  # per page, then the window is given up (and logged)
# Our kinds of history (the REST API's names) → the stream's wire type letter.
WIRE_TYPE = {"trades": "t", "quotes": "q", "bars": "b"}

Message = dict[str, Any]


class GiveUp(Exception):
    """A request that no retry will mend (a 4xx other than 429), or retries exhausted."""


class Stopped(Exception):
    """The producer is stopping: the pass ends where it is."""


def _utc(epoch_ns: int, round_up: bool) -> datetime:
    """A UTC datetime (alpaca-py's requests take no nanoseconds) to the microsecond, rounded
    outwards so the window only ever widens."""
    micros, rest = divmod(epoch_ns, 1000)
    if round_up and rest:
        micros += 1
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


class HistoricalSource:
    """One asset class's history: stocks (``/v2/stocks/...``) or crypto (``/v1beta3/crypto``)."""

    def __init__(
        self,
        asset_class: str,
        settings: ProducerSettings,
        stop: threading.Event,
        on_error: Any = None,
    ) -> None:
        key, secret = settings.credentials()
        url = settings.data_rest_url()
        self._stock = asset_class == "stock"
        self._feed = settings.feed
        self._stop = stop
        self._on_error = on_error or (lambda reason: None)
        client: StockHistoricalDataClient | CryptoHistoricalDataClient
        if self._stock:
            client = StockHistoricalDataClient(key, secret, raw_data=True, url_override=url)
            self._paths = {kind: f"/stocks/{kind}" for kind in WIRE_TYPE}
        else:
            client = CryptoHistoricalDataClient(key, secret, raw_data=True, url_override=url)
            feed = CryptoFeed(self._feed).value
            self._paths = {kind: f"/crypto/{feed}/{kind}" for kind in WIRE_TYPE}
        if not hasattr(client, "_retry") or not hasattr(client, "_session"):
            raise RuntimeError("this alpaca-py's REST client differs: install the pinned version")
        client._retry = 0  # our backoff retries (see the module docstring)
        session = client._session
        session.request = functools.partial(  # type: ignore[method-assign]
            session.request, timeout=REQUEST_TIMEOUT_SECONDS
        )
        self._client = client
        self.url = url

    def _params(self, kind: str, symbols: Sequence[str], start_ns: int, end_ns: int) -> Message:
        common: dict[str, Any] = {
            "symbol_or_symbols": list(symbols),
            "start": _utc(start_ns, round_up=False),
            "end": _utc(end_ns, round_up=True),
            "limit": PAGE_LIMIT,
        }
        request: Any
        if self._stock:
            feed = DataFeed(self._feed)
            if kind == "trades":
                request = StockTradesRequest(**common, feed=feed)
            elif kind == "quotes":
                request = StockQuotesRequest(**common, feed=feed)
            else:
                request = StockBarsRequest(**common, timeframe=TimeFrame.Minute, feed=feed)
        elif kind == "trades":
            request = CryptoTradesRequest(**common)
        elif kind == "quotes":
            request = CryptoQuoteRequest(**common)
        else:
            request = CryptoBarsRequest(**common, timeframe=TimeFrame.Minute)
        params: Message = request.to_request_fields()
        return params

    def pages(
        self, kind: str, symbols: Sequence[str], start_ns: int, end_ns: int
    ) -> Iterator[list[Message]]:
        """Each page of ``kind`` (trades, quotes, bars) for ``symbols`` stamped in
        ``[start_ns, end_ns]``, as stream messages; raises ``GiveUp`` or ``Stopped``."""
        params = self._params(kind, symbols, start_ns, end_ns)
        path, wire_type = self._paths[kind], WIRE_TYPE[kind]
        token: str | None = None
        while True:
            if token is not None:
                params["page_token"] = token
            body = self._get(path, params)
            page: list[Message] = []
            by_symbol = body.get(kind) or {}
            for symbol, items in by_symbol.items():
                for item in items or ():
                    item["T"] = wire_type
                    item["S"] = symbol
                    page.append(item)
            if page:
                yield page
            token = body.get("next_page_token")
            if not token:
                return

    def _get(self, path: str, params: Message) -> Message:
        backoff = Backoff(1.0, 60.0)
        for attempt in range(1, ATTEMPTS + 1):
            if self._stop.is_set():
                raise Stopped
            try:
                body = self._client.get(path, dict(params))
            except APIError as exc:
                status = exc.status_code
                if status == 429:
                    self._on_error("rate_limited")
                    delay = max(backoff.next_delay(), _reset_in(exc))
                    log.warning("backfill_rate_limited", retry_in_seconds=round(delay, 2))
                elif status is not None and 400 <= status < 500:
                    self._on_error("request_failed")
                    raise GiveUp(f"{path}: HTTP {status}: {str(exc)[:200]}") from None
                else:
                    self._on_error("request_failed")
                    delay = backoff.next_delay()
                    log.warning(
                        "backfill_request_failed",
                        path=path,
                        status=status,
                        error=str(exc)[:200],
                        retry_in_seconds=round(delay, 2),
                    )
            except (requests.RequestException, ValueError) as exc:
                self._on_error("request_failed")
                delay = backoff.next_delay()
                log.warning(
                    "backfill_request_failed",
                    path=path,
                    error=str(exc)[:200],
                    retry_in_seconds=round(delay, 2),
                )
            else:
                if not isinstance(body, dict):
                    raise GiveUp(f"{path}: not a JSON object")
                return body
            if attempt < ATTEMPTS and self._stop.wait(delay):
                raise Stopped
        raise GiveUp(f"{path}: {ATTEMPTS} attempts failed")


def _reset_in(exc: APIError) -> float:
    """Seconds until the rate limit's window resets (``X-RateLimit-Reset``), if it says."""
    response = exc.response
    if response is None:
        return 0.0
    try:
        reset = float(response.headers.get("X-RateLimit-Reset", ""))
    except ValueError:
        return 0.0
    return min(60.0, max(0.0, reset - time.time()))
