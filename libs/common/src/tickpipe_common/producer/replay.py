"""Re-publish a time range of the CSV backup. Harmless to repeat: ticks have a stable identity
and the consumer stores each one once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from tickpipe_common.kafka_config import producer_config
from tickpipe_common.logging import get_logger
from tickpipe_common.producer.csv_backup import read_rows
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.wire import COLUMNS, document_from_cells, encode_value
from tickpipe_common.schema import AssetClass

log = get_logger(__name__)

_SYMBOL_AT, _KIND_AT = COLUMNS.index("symbol"), COLUMNS.index("kind")


@dataclass(frozen=True)
class ReplayResult:
    read: int
    delivered: int
    failed: int


def replay_backup(
    settings: ProducerSettings,
    service: str,
    asset_class: AssetClass,
    since_ns: int,
    until_ns: int,
    symbols: tuple[str, ...] | None,
    backup_dir: Path | None = None,
    flush_timeout: float = 60.0,
) -> ReplayResult:
    # A private registry: replay is a one-shot command, not a scraped service.
    metrics = ProducerMetrics(CollectorRegistry())
    publisher = KafkaPublisher(
        producer_config(settings, client_id=f"{service}-replay"),
        settings.kafka_topic,
        service,
        asset_class.value,
        metrics,
        wait_for_room=True,
    )
    read = 0
    for row in read_rows(
        backup_dir or settings.backup_dir, asset_class, since_ns, until_ns, symbols
    ):
        read += 1
        value = encode_value(document_from_cells(row))
        publisher.produce(row[_SYMBOL_AT].encode(), value, row[_KIND_AT])
        if read % 10_000 == 0:
            publisher.poll(0)
            log.info("replay_progress", read=read, delivered=publisher.delivered)
    undelivered = publisher.flush(flush_timeout)
    result = ReplayResult(
        read=read, delivered=publisher.delivered, failed=publisher.failed + undelivered
    )
    log.info("replay_finished", read=result.read, delivered=result.delivered, failed=result.failed)
    return result
