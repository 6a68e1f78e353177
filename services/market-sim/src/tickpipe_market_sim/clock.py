"""Event timestamps: wall-clock nanoseconds that prove nanosecond precision downstream.

Timestamps are "now" (not a simulated date) so downstream checks that reject ticks from
the future or from long ago accept them. Two adjustments make them useful to tests:
they strictly increase (no two events share a timestamp, so ordering is unambiguous),
and their sub-microsecond digits are never all zero (a pipeline that silently truncates
to microseconds, as Python's ``datetime`` does, is caught by comparing values).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EpochNanos:
    """A timestamp inside a wire message; the encoder picks its representation
    (msgpack Timestamp ext type, or RFC 3339 text with nine fractional digits)."""

    ns: int


class EventClock:
    def __init__(self, source: Callable[[], int] = time.time_ns) -> None:
        self._source = source
        self._last = 0

    def now(self) -> int:
        ns = max(self._source(), self._last + 1)
        if ns % 1000 == 0:
            # A whole microsecond would let µs truncation pass unnoticed.
            ns += 1
        self._last = ns
        return ns
