"""What happens to each stream message: normalise → filter → CSV backup → Kafka."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tickpipe_common.logging import get_logger
from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.normalise import MalformedMessage, normalise
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.schema import AssetClass, Tick
from tickpipe_common.timestamps import now_ns

log = get_logger(__name__)


class Publisher(Protocol):
    def publish(self, tick: Tick) -> bool: ...


class TickPipeline:
    def __init__(
        self,
        asset_class: AssetClass,
        feed: str,
        price_filter: PriceChangeFilter,
        backup: CsvBackupWriter,
        publisher: Publisher,
        metrics: ProducerMetrics,
        clock: Callable[[], int] = now_ns,
    ) -> None:
        self._asset_class = asset_class
        self._feed = feed
        self._filter = price_filter
        self._backup = backup
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock
        self.last_message_at = time.monotonic()
        self.messages_seen = 0

    def seconds_since_last_message(self) -> float:
        return time.monotonic() - self.last_message_at

    def handle(self, msg: Mapping[str, Any]) -> None:
        self.last_message_at = time.monotonic()
        self.messages_seen += 1
        try:
            tick = normalise(msg, self._asset_class, self._feed, self._clock())
        except MalformedMessage as exc:
            self._metrics.malformed.inc()
            log.warning("malformed_stream_message", reason=str(exc), type=str(msg.get("T")))
            return
        labels = (tick.kind.value, tick.asset_class.value)
        self._metrics.tick_received(*labels, tick.symbol, tick.ts_ns)
        if not self._filter.should_publish(tick):
            self._metrics.filtered.labels(*labels).inc()
            return
        try:
            written = self._backup.write(tick)
        except OSError as exc:
            self._metrics.backup_errors.inc()
            log.error("backup_write_failed", error=str(exc), symbol=tick.symbol)
        else:
            self._metrics.backup_rows.inc()
            self._metrics.backup_bytes.inc(written)
        self._publisher.publish(tick)
