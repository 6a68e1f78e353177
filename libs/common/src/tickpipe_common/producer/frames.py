"""Frame-level receive for an alpaca-py data stream: one hand-off call per frame, not per message.

alpaca-py's receive loop (``DataStream._consume``, 0.44) decodes a frame and then, for each
of its messages (Alpaca packs up to hundreds into one frame), checks it, creates and awaits a
``_dispatch`` coroutine, looks the handler up by channel and symbol and awaits the handler's
coroutine. At tens of thousands of messages a second that per-message dispatch was about a
third of the event loop's time, and the event loop shares the interpreter lock with the sink.

``install`` replaces that one method on one stream *instance* (the class is untouched) with
``FrameReceiver.consume``, which keeps alpaca-py's contract of ``_consume`` exactly: the same
stop-queue check, the same ``data_timeout`` staleness rule (only market data resets the clock,
and ``_data_received`` is set the same way), the same return values (True: stale, reconnect;
False: stopped), the same exceptions to ``_run_forever``. What changes:

- a frame whose messages are all market data of a subscribed channel goes to the hand-off in
  one ``receive_frame`` call (trade corrections and cancel/errors count as the trades channel's,
  as Alpaca sends them to trade subscribers); any other frame (subscription acks, errors, a
  type we did not subscribe) is dispatched message by message through alpaca-py's own
  ``_dispatch``, so its logging and handler routing stay alpaca-py's, except that the messages
  of our types in it go to the hand-off as well;
- msgpack timestamps are decoded straight to integer epoch nanoseconds (``timestamp=2``)
  instead of one ``msgpack.Timestamp`` object per message (``wire.epoch_ns`` takes both).

Symbols are not checked per message: Alpaca sends only what was subscribed (or everything,
for ``*``), and every symbol of a producer has the same handler.

It relies on alpaca-py internals (``_consume``, ``_ws``, ``_stop_stream_queue``,
``_data_timeout``, ``_data_received``, ``_dispatch``), like ``stream`` does for
``_start_ws``; ``install`` checks they exist and fails at start-up, not mid-stream, if an
alpaca-py upgrade removed one. alpaca-py is pinned in ``constraints.txt``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

import msgpack
from alpaca.data.live.websocket import _CHANNEL_TYPES, _is_market_data

from tickpipe_common.logging import get_logger

log = get_logger(__name__)

# alpaca-py's wire type letter of each channel we subscribe to.
TYPE_BY_CHANNEL = {
    "trades": "t",
    "quotes": "q",
    "bars": "b",
    "updated_bars": "u",
    "daily_bars": "d",
    "orderbooks": "o",
    "statuses": "s",
    "lulds": "l",
}
# Types that come with a channel without being subscribed themselves: trade corrections and
# cancel/errors, with trades.
TYPES_WITH_CHANNEL = {"trades": ("c", "x")}
_REQUIRED = ("_consume", "_ws", "_stop_stream_queue", "_data_timeout", "_dispatch", "close")

# What alpaca-py's own loop uses as the longest wait for one frame.
RECEIVE_TIMEOUT_SECONDS = 5.0

FrameHandler = Callable[[list[Any]], None]


class FrameReceiver:
    def __init__(self, stream: Any, channels: Collection[str], on_frame: FrameHandler) -> None:
        self._stream = stream
        types = {TYPE_BY_CHANNEL[channel] for channel in channels}
        for channel in channels:
            types.update(TYPES_WITH_CHANNEL.get(channel, ()))
        self._types = frozenset(types)
        self._on_frame = on_frame

    def market_only(self, msgs: list[Any]) -> bool:
        types = self._types
        for msg in msgs:
            if msg.__class__ is not dict or msg.get("T") not in types or "S" not in msg:
                return False
        return True

    async def consume(self) -> bool:
        stream = self._stream
        loop = asyncio.get_running_loop()
        last_data_time = loop.time()
        stream._data_received = False
        unpackb, on_frame, market_only = msgpack.unpackb, self._on_frame, self.market_only
        while True:
            if not stream._stop_stream_queue.empty():
                stream._stop_stream_queue.get(timeout=1)
                await stream.close()
                return False
            receive_timeout = RECEIVE_TIMEOUT_SECONDS
            data_timeout = stream._data_timeout
            if data_timeout is not None:
                elapsed = loop.time() - last_data_time
                if elapsed >= data_timeout:
                    log.warning("stream_silent", seconds=round(data_timeout, 1), action="reconnect")
                    await stream.close()
                    return True
                receive_timeout = min(receive_timeout, data_timeout - elapsed)
            try:
                frame = await asyncio.wait_for(stream._ws.recv(), receive_timeout)
            except TimeoutError:
                continue
            msgs = unpackb(frame, timestamp=2)
            if msgs.__class__ is list and msgs and market_only(msgs):
                on_frame(msgs)
                stream._data_received = True
                last_data_time = loop.time()
                continue
            if await self._dispatch_each(msgs if isinstance(msgs, list) else [msgs]):
                last_data_time = loop.time()

    async def _dispatch_each(self, msgs: list[Any]) -> bool:
        """alpaca-py's per-message path for a mixed or control frame; True if market data."""
        stream, types, market = self._stream, self._types, False
        for msg in msgs:
            is_market_data = _is_market_data(msg)
            if is_market_data:
                stream._data_received = market = True
            msg_type = msg.get("T")
            if msg_type in _CHANNEL_TYPES and not is_market_data:
                continue  # as alpaca-py: a channel message without a symbol is skipped
            if msg_type in types:
                self._on_frame([msg])
            else:
                await stream._dispatch(msg)
        return market


def install(stream: Any, channels: Collection[str], on_frame: FrameHandler) -> FrameReceiver:
    """Make this stream hand whole frames of market data to ``on_frame``."""
    missing = [name for name in _REQUIRED if not hasattr(stream, name)]
    if missing:
        raise RuntimeError(
            f"this alpaca-py has no {', '.join(missing)} on {type(stream).__name__}: "
            "install the version pinned in constraints.txt"
        )
    receiver = FrameReceiver(stream, channels, on_frame)
    stream._consume = receiver.consume
    return receiver
