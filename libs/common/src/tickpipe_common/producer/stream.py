"""Keeps an alpaca-py data stream running: subscribe, supervise, reconnect, watch for silence.

alpaca-py (0.44) reconnects by itself with capped, jittered backoff and, given
``data_timeout``, drops a connection that has gone quiet. We configure both from our settings
and add what it lacks: connect counting for metrics, a ``connected`` flag that turns false as
soon as alpaca-py starts closing a connection (not only when its whole loop ends), an outer
restart with our own backoff for when its loop gives up (it returns on "insufficient
subscription" and may raise), and a fast, clean stop for SIGTERM.

Closing a mute socket must not block the reconnect: the websockets library waits
``close_timeout`` for the peer's close frame and again for the TCP close (10 s each by
default, which made a silent stream reconnect 31 s late), so we set it to one second.

Stock trades bring their corrections and cancel/errors (Alpaca sends them to every trade
subscriber; alpaca-py dispatches them to a handler of their own, registered here too), and
``statuses`` and ``lulds`` are channels of their own.

A 406 "connection limit exceeded" at the connect means the account's one connection per feed
is taken: by another client, or by our own previous connection, which Alpaca keeps half-dead for
about 90 s after a drop. Probing that window every second or two (alpaca-py's backoff starts
at one second) only adds refused connects, so after a 406 the next attempt waits
``RECONNECT_LIMIT_SECONDS``, doubling per 406 up to ``RECONNECT_LIMIT_MAX_SECONDS``, jittered
(``tickpipe_common.backoff``). Waiting costs nothing: the gap is backfilled (``backfill``).

The message handler is the hand-off's (``handoff.HandOff.handler``): it only appends. Given
``on_frame`` (the producers give ``HandOff.receive_frame``), whole frames of market data skip
alpaca-py's per-message dispatch (``frames``); the handler then sees only what alpaca-py
routes itself (a frame mixing control messages and data).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tickpipe_common.backoff import Backoff
from tickpipe_common.logging import get_logger
from tickpipe_common.producer import frames
from tickpipe_common.producer.settings import ProducerSettings

log = get_logger(__name__)

MessageHandler = Callable[[Mapping[str, Any]], Awaitable[None]]
# Builds a fresh alpaca-py DataStream (StockDataStream or CryptoDataStream), raw_data=True.
StreamFactory = Callable[[], Any]

CLOSE_TIMEOUT_SECONDS = 1.0
# What alpaca-py's auth raises when Alpaca answers 406.
CONNECTION_LIMIT_TEXT = "connection limit exceeded"

# Our channel names → alpaca-py's subscribe method suffixes.
SUBSCRIBE_METHODS = {
    "trades": "subscribe_trades",
    "quotes": "subscribe_quotes",
    "bars": "subscribe_bars",
    "updated_bars": "subscribe_updated_bars",
    "daily_bars": "subscribe_daily_bars",
    "orderbooks": "subscribe_orderbooks",
    "statuses": "subscribe_trading_statuses",
}
# alpaca-py (0.44) routes LULD messages to the "lulds" handlers but has no method to
# subscribe them: ``subscribe_lulds`` below fills that table the way its own methods do.
LULDS = "lulds"
# What comes with stock trades on Alpaca without a subscription of its own: alpaca-py
# dispatches corrections and cancel/errors to the handler registered by these methods.
WITH_TRADES = ("register_trade_corrections", "register_trade_cancels")


def subscribe_lulds(stream: Any, handler: MessageHandler, *symbols: str) -> None:
    """LULD bands on an alpaca-py ``StockDataStream`` (relies on ``_subscribe``/``_handlers``)."""
    stream._subscribe(handler, symbols, stream._handlers[LULDS])


class StreamSupervisor:
    def __init__(
        self,
        make_stream: StreamFactory,
        symbols: Sequence[str],
        channels: Sequence[str],
        on_message: MessageHandler,
        on_connect: Callable[[], None],
        backoff: Backoff,
        on_frame: frames.FrameHandler | None = None,
        limit_backoff: Backoff | None = None,
        on_limited: Callable[[], None] = lambda: None,
    ) -> None:
        """``limit_backoff``: the reconnect delays after a 406 (None: alpaca-py's own)."""
        self._make_stream = make_stream
        self._limit_backoff = limit_backoff
        self._on_limited = on_limited
        self._limited = False
        self._on_frame = on_frame
        self._symbols = tuple(symbols)
        self._channels = tuple(channels)
        self._on_message = on_message
        self._on_connect = on_connect
        self._backoff = backoff
        self.connected = False

    def _build(self) -> Any:
        stream = self._make_stream()
        for channel in self._channels:
            if channel == LULDS:
                subscribe_lulds(stream, self._on_message, *self._symbols)
            else:
                getattr(stream, SUBSCRIBE_METHODS[channel])(self._on_message, *self._symbols)
        if "trades" in self._channels:
            for method in WITH_TRADES:
                if hasattr(stream, method):  # stocks; crypto has neither
                    getattr(stream, method)(self._on_message)
        if self._on_frame is not None:
            frames.install(stream, self._channels, self._on_frame)

        # alpaca-py has no connect callback; wrap this instance's connect+auth step so each
        # successful (re)connect is seen. Instance attributes shadow the class's method.
        start_ws: Callable[[], Awaitable[None]] = stream._start_ws

        async def start_ws_and_report() -> None:
            self.connected = False
            try:
                await start_ws()
            except ValueError as exc:
                if CONNECTION_LIMIT_TEXT in str(exc):
                    self._limited = True
                    self._on_limited()
                raise
            self.connected = True
            self._backoff.reset()
            if self._limit_backoff is not None:
                self._limit_backoff.reset()
            self._on_connect()

        if self._limit_backoff is not None:
            alpaca_delay: Callable[[int], float] = stream._reconnect_delay
            limit_backoff = self._limit_backoff

            def reconnect_delay(retries: int) -> float:
                if not self._limited:
                    return alpaca_delay(retries)
                self._limited = False
                delay = limit_backoff.next_delay()
                log.warning(
                    "stream_connection_limit",
                    reason="406: the feed's connection is taken (another client, or our "
                    "previous connection still half-dead)",
                    retry_in_seconds=round(delay, 2),
                )
                return delay

            stream._reconnect_delay = reconnect_delay

        close: Callable[[], Awaitable[None]] = stream.close

        async def close_and_report() -> None:
            self.connected = False  # a stale or failed connection is gone from this moment
            await close()

        stream._start_ws = start_ws_and_report
        stream.close = close_and_report
        return stream

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            stream = self._build()
            task = asyncio.create_task(stream._run_forever(), name="alpaca-stream")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                await self._shutdown(stream, task)
                return
            stopper.cancel()
            self.connected = False
            error = task.exception()
            delay = self._backoff.next_delay()
            log.warning(
                "stream_ended",
                error=str(error) if error else "stream loop returned",
                retry_in_seconds=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _shutdown(self, stream: Any, task: asyncio.Task[None]) -> None:
        # stop_ws() asks the loop to end; closing the socket wakes a recv() that may wait 5 s.
        await stream.stop_ws()
        with contextlib.suppress(Exception):
            await stream.close()
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - shutting down regardless
            log.warning("stream_stop_unclean", error=str(exc))
            task.cancel()
        self.connected = False


def build_alpaca_stream(stream_class: Any, settings: ProducerSettings, url: str) -> Any:
    """An alpaca-py ``StockDataStream`` or ``CryptoDataStream`` as the producers use it.

    ``raw_data=True`` keeps the msgpack timestamps (nanoseconds); ``url_override`` carries
    the feed path, so every feed (delayed_sip, test, the simulator) works the same way;
    ``data_timeout`` is alpaca-py's own silent-stream reconnect.
    """
    key, secret = settings.credentials()
    stream = stream_class(
        key,
        secret,
        raw_data=True,
        url_override=url,
        data_timeout=settings.stale_after_seconds,
        # alpaca-py's defaults, plus a short close_timeout (see the module docstring) and a
        # smaller receive buffer: 128 frames (Alpaca packs many messages per frame) instead
        # of 1,024, so a producer that falls behind holds megabytes, not a hundred, before
        # TCP pushes back.
        websocket_params={
            "ping_interval": 10,
            "ping_timeout": 180,
            "max_queue": 128,
            "close_timeout": CLOSE_TIMEOUT_SECONDS,
        },
    )
    # alpaca-py's reconnect backoff bounds; 0.44 has no public setter for them.
    stream._reconnect_min_backoff = settings.reconnect_initial_seconds
    stream._reconnect_max_backoff = settings.reconnect_max_seconds
    return stream
