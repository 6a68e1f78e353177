"""The bounded hand-off between the WebSocket loop and the sink thread.

The stream handler runs on the event loop that reads the socket, once per message. It only
appends the raw message to the current batch; the first message of a batch schedules, with
``call_soon``, one hand-over of the whole batch to the sink thread, stamped with one receive
time. alpaca-py dispatches every message of a frame without yielding to the loop, so a batch is
at least one frame: the per-message cost on the loop is a list append.

The hand-off is bounded in messages (``HANDOFF_MAX_MESSAGES``). Should the sink ever fall that
far behind, the hand-over waits for room: the loop stops reading, TCP pushes back on the sender
and the wait is counted (``tickpipe_producer_handoff_waits_total``), rather than holding an
unbounded backlog in memory or dropping ticks in silence.

Each hand-over also keeps the stream's *watermark* (``newest_ns``): the exchange time of the
batch's last message, if newer. One look per batch, not per tick: messages come about in time
order (a bar, stamped with its minute's start, never moves it back), and the backfill widens
its windows by a margin anyway (``backfill``). ``after_next_batch`` asks for one call with the
newest exchange time of the next batch: the first live time after a reconnect.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from tickpipe_common.timestamps import now_ns, parse_rfc3339_ns

RawMessage = Mapping[str, Any]
# (receive time in epoch ns, the messages of one or more frames)
Batch = tuple[int, list[RawMessage]]


class HandOff:
    def __init__(
        self,
        max_messages: int,
        on_wait: Callable[[], None] = lambda: None,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        self._max = max_messages
        self._on_wait = on_wait
        self._clock = clock
        self._queue: deque[Batch] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._current: list[RawMessage] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_message_at = time.monotonic()
        self.newest_ns = 0  # the watermark: the newest exchange time handed over
        self._on_next_batch: Callable[[int], None] | None = None

    def after_next_batch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(newest exchange time of the batch)`` once, for the next batch."""
        self._on_next_batch = callback

    # --- the event-loop side ----------------------------------------------------------------

    def receive(self, msg: RawMessage) -> None:
        """The stream handler: O(1), never raises, never blocks."""
        current = self._current
        current.append(msg)
        if len(current) == 1:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._ship)

    def receive_frame(self, msgs: list[RawMessage]) -> None:
        """A whole frame of messages at once (``frames``): O(1) per frame, never blocks."""
        current = self._current
        was_empty = not current
        current.extend(msgs)
        if was_empty and current:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._ship)

    async def handler(self, msg: RawMessage) -> None:
        """``receive`` as the coroutine alpaca-py wants."""
        self.receive(msg)

    def _ship(self) -> None:
        batch, self._current = self._current, []
        self.last_message_at = time.monotonic()
        if batch:
            newest = batch[-1].get("t")
            if newest.__class__ is not int:
                newest = exchange_ns(newest)
            self.newest_ns = max(self.newest_ns, newest)
            if self._on_next_batch is not None:
                callback, self._on_next_batch = self._on_next_batch, None
                callback(max(exchange_ns(msg.get("t")) for msg in batch))
        self.put((self._clock(), batch))

    def seconds_since_last_message(self) -> float:
        return time.monotonic() - self.last_message_at

    def put(self, batch: Batch) -> None:
        size = len(batch[1])
        with self._cond:
            if self._queued + size > self._max and self._queued > 0:
                self._on_wait()
                while self._queued + size > self._max and self._queued > 0 and not self._closed:
                    self._cond.wait(0.5)
            self._queue.append(batch)
            self._queued += size
            self._cond.notify_all()

    # --- the sink side ------------------------------------------------------------------------

    def take(self, timeout: float) -> list[Batch] | None:
        """Everything handed over so far (waits up to ``timeout`` for something); ``None`` once
        closed and drained."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            if not self._queue:
                return None if self._closed else []
            batches = list(self._queue)
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            return batches

    @property
    def depth(self) -> int:
        return self._queued

    def close(self) -> None:
        """No more batches: ``take`` returns what is left, then ``None``."""
        if self._current:
            self._ship()
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def exchange_ns(value: Any) -> int:
    """A message's ``t`` as epoch nanoseconds: an int (frame-level receive), a
    ``msgpack.Timestamp`` (alpaca-py's per-message path) or RFC 3339 text; 0 if none of them."""
    if value.__class__ is int:
        return int(value)
    to_unix_nano = getattr(value, "to_unix_nano", None)
    if to_unix_nano is not None:
        return int(to_unix_nano())
    if isinstance(value, str):
        try:
            return parse_rfc3339_ns(value)
        except ValueError:
            return 0
    return 0
