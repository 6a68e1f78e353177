"""One client connection: its protocol state and its outbound queue.

The market hands events to every subscribed session without waiting for any of them; each
session's writer task drains its own queue onto its socket. A slow client therefore only
delays itself, and one that falls SIM_SEND_QUEUE_LIMIT messages behind is cut off with
Alpaca's 407 "slow client", as Alpaca does.

Frames follow Alpaca's rules: control messages travel alone in an array of one; data
messages are batched, several per frame, when they queue up.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from tickpipe_market_sim.encoding import Encoding, encode_frame
from tickpipe_market_sim.protocol import ErrorCode, Kind, Message, error
from tickpipe_market_sim.stats import SentStats
from tickpipe_market_sim.subscriptions import Subscriptions
from tickpipe_market_sim.universe import Feed

# Data messages per frame at most: large enough to amortise framing, small enough that
# alpaca-py's default max frame size is never approached.
MAX_BATCH = 200
# Close code after a protocol error that ends the session (auth timeout, limits, 407).
POLICY_VIOLATION = 1008


class FrameSink(Protocol):
    async def send(self, message: str | bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Silence:
    """The server-wide mute of the fault controls, shared by every session: until its
    deadline (monotonic seconds) no session sends anything."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.until = 0.0

    def remaining(self) -> float:
        if not self.until:
            return 0.0  # the common case costs no clock read
        left = self.until - self._clock()
        if left <= 0:
            self.until = 0.0
            return 0.0
        return left

    def mute(self, seconds: float) -> None:
        self.until = self._clock() + seconds if seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class _Outgoing:
    body: Message
    kind: Kind | None  # None: a control message
    symbol: str = ""


class Session:
    def __init__(
        self,
        conn_id: int,
        feed: Feed,
        encoding: Encoding,
        sink: FrameSink,
        stats: SentStats,
        queue_limit: int,
        silence: Silence | None = None,
    ) -> None:
        self.id = conn_id
        self.feed = feed
        self.encoding = encoding
        self.subscriptions = Subscriptions(feed.channels, feed.mirrored_channels)
        self.key: str | None = None
        # Order-book symbols whose full book this session has received: until it has,
        # it gets a full book (r=true) instead of a delta.
        self.book_synced: set[str] = set()
        self.slow = False
        # Dropped by the fault controls (its slot may stay half-dead).
        self.dropped = False
        # Messages it may fall behind before a 407; the fault controls may change it.
        self.queue_limit = queue_limit
        self._silence = silence or Silence()
        self._sink = sink
        self._stats = stats
        self._queue: deque[_Outgoing] = deque()
        self._data_queued = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._close_with: tuple[int, str] | None = None

    @property
    def authenticated(self) -> bool:
        return self.key is not None

    # --- producers of outgoing messages -------------------------------------------------

    def push_control(self, message: Message) -> None:
        if self._closing:
            return
        self._queue.append(_Outgoing(message, None))
        self._wakeup.set()

    def push_error(self, code: ErrorCode) -> None:
        self._stats.error_sent(int(code))
        self.push_control(error(code))

    def push_data(self, kind: Kind, symbol: str, body: Message) -> bool:
        """Queue a market-data message; False when it was not queued: the session is (now)
        being dropped, or the server is muted (the message is never sent, nor counted)."""
        if self._closing or self._silence.remaining():
            return False
        if self._data_queued >= self.queue_limit:
            self._drop_as_slow()
            return False
        self._queue.append(_Outgoing(body, kind, symbol))
        self._data_queued += 1
        self._wakeup.set()
        return True

    def _drop_as_slow(self) -> None:
        # The queued data was never sent, so it is discarded uncounted: /stats stays exact.
        self._queue = deque(item for item in self._queue if item.kind is None)
        self._data_queued = 0
        self.slow = True
        self.push_error(ErrorCode.SLOW_CLIENT)
        self.finish(POLICY_VIOLATION, "slow client")

    # --- the writer task ----------------------------------------------------------------

    def finish(self, close_code: int | None = None, reason: str = "") -> None:
        """Accept nothing more; the writer sends what is queued, then closes the
        connection with ``close_code`` if one is given, and ends."""
        if not self._closing:
            self._closing = True
            if close_code is not None:
                self._close_with = (close_code, reason)
        self._wakeup.set()

    @property
    def closing(self) -> bool:
        return self._closing

    async def run_writer(self) -> None:
        """Drain the queue onto the socket until :meth:`finish` (or a 407), or the
        connection closes; counts each frame once ``send`` has returned."""
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                muted = self._silence.remaining()
                if muted:
                    await asyncio.sleep(muted)  # the fault controls' mute: send nothing
                    continue
                first = self._queue.popleft()
                if first.kind is None:
                    await self._sink.send(encode_frame([first.body], self.encoding))
                    self._stats.frame_sent(self.id, (), control=1)
                    continue
                batch = [first]
                while self._queue and self._queue[0].kind is not None and len(batch) < MAX_BATCH:
                    batch.append(self._queue.popleft())
                self._data_queued -= len(batch)
                await self._sink.send(encode_frame(_bodies(batch), self.encoding))
                self._stats.frame_sent(self.id, _labels(batch))
            if self._close_with is not None:
                await self._sink.close(*self._close_with)
        except ConnectionClosed:
            # The peer is gone; whatever is still queued was never sent and is not counted.
            return


def _bodies(batch: Sequence[_Outgoing]) -> list[Message]:
    return [item.body for item in batch]


def _labels(batch: Sequence[_Outgoing]) -> list[tuple[str, Kind]]:
    return [(item.symbol, item.kind) for item in batch if item.kind is not None]
