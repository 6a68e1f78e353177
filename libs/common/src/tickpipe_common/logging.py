"""Structured logs: one JSON object per line on stdout, plain text when stdout is a terminal.

Every record carries ``time``, ``level``, ``service`` and ``event``; anything else a caller
passes becomes a context field. Callers log an *event name* plus fields, never a formatted
sentence, so that `kubectl logs | jq` and log pipelines can filter on them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

# Attributes every LogRecord has; anything else on a record came from `extra=` (our fields).
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "service": self._service,
            "event": record.getMessage(),
            "logger": record.name,
        }
        payload.update(_context(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _context(record).items())
        line = (
            f"{_timestamp(record)} {record.levelname.lower():<7} {self._service} "
            f"{record.getMessage()} {fields}"
        ).rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_NUMBERS = re.compile(r"[0-9]+")


def _shape(record: logging.LogRecord) -> str:
    """A record's message and fields with every number blanked: librdkafka's repeats differ
    only in counters and timings ("after 466ms in state AUTH_REQ")."""
    fields = json.dumps(_context(record), default=str, sort_keys=True)
    return _NUMBERS.sub("#", f"{record.getMessage()} {fields}")


class RepeatFilter(logging.Filter):
    """Lets a message through once per ``window`` seconds, then says how many of the same
    shape (equal but for numbers) were held back. librdkafka repeats a connection or
    authentication error for every broker and retry, which would bury everything else."""

    def __init__(self, window: float = 10.0) -> None:
        super().__init__()
        self._window = window
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, _shape(record))
        last, held = self._seen.get(key, (0.0, 0))
        if record.created - last < self._window:
            self._seen[key] = (last, held + 1)
            return False
        if held:
            record.repeated = held
        if len(self._seen) > 1000:  # bounded: forget old messages rather than grow
            self._seen.clear()
        self._seen[key] = (record.created, 0)
        return True


# Loggers whose repeated lines are rate-limited (see RepeatFilter): librdkafka's own, the
# services' reports of the Kafka clients' error callbacks (KAFKA_ERRORS_LOGGER), and the
# producer's that can fire once per tick or batch (malformed messages, backup write failures).
KAFKA_ERRORS_LOGGER = "tickpipe.kafka"
REPEATING_LOGGERS = (
    "librdkafka",
    KAFKA_ERRORS_LOGGER,
    "tickpipe_common.producer.sink",
    "tickpipe_common.producer.csv_backup",
    "tickpipe_common.producer.backfill",
)


def configure_logging(
    service: str,
    level: str = "INFO",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route every logger (ours and the libraries') through one handler on stdout."""
    out = stream if stream is not None else sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(service) if use_json else TextFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter at INFO (alpaca-py's per-connect lines, websockets' handshakes) is kept,
    # but their DEBUG noise is not wanted even when our own level is DEBUG.
    for name in REPEATING_LOGGERS:
        chatty = logging.getLogger(name)
        for old_filter in list(chatty.filters):
            chatty.removeFilter(old_filter)
        chatty.addFilter(RepeatFilter())
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


class EventLogger:
    """A thin facade so call sites read ``log.info("tick_published", symbol="AAPL")``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra=fields, exc_info=exc_info, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, True, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)
