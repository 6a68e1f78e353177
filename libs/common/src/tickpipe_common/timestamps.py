"""Exact nanosecond timestamps.

Python's ``datetime`` stops at microseconds, and Alpaca's feeds carry nanoseconds, so the
schema holds exchange timestamps as integer nanoseconds since the Unix epoch (UTC) and only
ever converts them to and from RFC 3339 text with integer arithmetic.
"""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, datetime, timedelta

NANOS_PER_SECOND = 1_000_000_000

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_rfc3339_ns(text: str) -> int:
    """``2024-03-01T14:30:00.123456789Z`` → epoch nanoseconds, without losing a digit."""
    # Fast path for the form tickpipe itself writes (nine digits, Z): the consumer parses two
    # per message. Ticks arrive in time order, so the whole-second part is nearly always cached.
    if len(text) == 30 and text[19] == "." and text[29] == "Z":
        fraction = text[20:29]
        if fraction.isdigit():
            prefix = text[:19]
            seconds = _WHOLE_SECONDS.get(prefix)
            if seconds is None:
                seconds = _whole_seconds(prefix)
            return seconds + int(fraction)
    return _parse_general(text)


# A plain dict rather than functools.lru_cache: one lookup without a wrapper call per tick.
_WHOLE_SECONDS: dict[str, int] = {}
_WHOLE_SECONDS_MAX = 4096


def _whole_seconds(prefix: str) -> int:
    if len(_WHOLE_SECONDS) >= _WHOLE_SECONDS_MAX:
        _WHOLE_SECONDS.clear()
    seconds = _parse_general(prefix + "Z")  # in ns, a whole number of seconds
    _WHOLE_SECONDS[prefix] = seconds
    return seconds


def _parse_general(text: str) -> int:
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    # Validate the calendar fields (e.g. Feb 30) through datetime, which is exact at this level.
    datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    fraction = m.group(7) or ""
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    offset = m.group(8)
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds * NANOS_PER_SECOND + nanos


def format_rfc3339_ns(epoch_ns: int) -> str:
    """Epoch nanoseconds → ``YYYY-MM-DDTHH:MM:SS.fffffffffZ`` (always nine digits, UTC)."""
    seconds, nanos = divmod(epoch_ns, NANOS_PER_SECOND)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def ns_to_datetime(epoch_ns: int) -> datetime:
    """For PostgreSQL's ``timestamptz`` (microseconds): truncates, never rounds up a second."""
    return _EPOCH + timedelta(microseconds=epoch_ns // 1000)


def now_ns() -> int:
    return time.time_ns()


def utc_date(epoch_ns: int) -> str:
    """The UTC calendar day of a timestamp, ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(epoch_ns // NANOS_PER_SECOND))
