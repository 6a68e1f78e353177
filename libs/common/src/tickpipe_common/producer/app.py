"""Runs a producer service as a small pipeline: receive → bounded hand-off → sink.

- ``stream``: alpaca-py's WebSocket loop, supervised; it hands each frame of raw messages to
  the hand-off in one call (``frames``, ``handoff``), so the loop does nothing but receive.
- ``sink``: one thread that normalises, filters, writes the backup and serves Kafka, and
  spills to the backup and re-publishes from it when the Kafka queue is full.
- ``backfill``: a thread that fetches every gap in the stream (after each reconnect, and at
  start-up from the newest tick of the backup) from the historical API and hands it to the sink.
- here: health, readiness and the orderly stop (stream first, then the backfill, then drain
  the hand-off, then flush Kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

from tickpipe_common.backoff import Backoff
from tickpipe_common.health import HealthServer
from tickpipe_common.kafka_config import masked, producer_config
from tickpipe_common.logging import get_logger
from tickpipe_common.producer.backfill import Backfiller, GapWatch
from tickpipe_common.producer.csv_backup import CsvBackupWriter, newest_ticks
from tickpipe_common.producer.handoff import HandOff
from tickpipe_common.producer.historical import HistoricalSource
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.sink import TickSink
from tickpipe_common.producer.spec import ProducerSpec
from tickpipe_common.producer.stream import StreamSupervisor

log = get_logger(__name__)

FLUSH_ON_STOP_SECONDS = 10.0
DRAIN_ON_STOP_SECONDS = 30.0
BACKFILL_STOP_SECONDS = 2.0


class Readiness:
    """Ready = connected to the stream, data not stale, Kafka taking ticks, backup writing."""

    def __init__(
        self,
        supervisor: StreamSupervisor,
        handoff: HandOff,
        sink: TickSink,
        publisher: KafkaPublisher,
        stale_after: float,
        metrics: ProducerMetrics,
    ) -> None:
        self._supervisor = supervisor
        self._handoff = handoff
        self._sink = sink
        self._publisher = publisher
        self._stale_after = stale_after
        self._metrics = metrics

    def __call__(self) -> tuple[bool, dict[str, object]]:
        silent_for = self._handoff.seconds_since_last_message()
        fresh = silent_for < self._stale_after
        kafka_ok, kafka = self._publisher.healthy()
        connected = self._supervisor.connected
        backup_ok = self._sink.backup_ok
        ready = connected and fresh and kafka_ok and backup_ok and self._sink.alive
        self._metrics.ready.set(1 if ready else 0)
        self._metrics.ws_connected.set(1 if connected else 0)
        self._metrics.seconds_since_last_message.set(silent_for)
        return ready, {
            "stream_connected": connected,
            "seconds_since_last_message": round(silent_for, 3),
            "kafka_ok": kafka_ok,
            "backup_ok": backup_ok,
            "spilling": self._sink.spill is not None,
            "handoff_messages": self._handoff.depth,
            "backfill_queued": self._sink.backfill_queued,
            **kafka,
        }


async def _refresh_gauges(readiness: Readiness, stop: asyncio.Event) -> None:
    """Keep readiness gauges current between scrapes (the alerts read them)."""
    while not stop.is_set():
        readiness()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


def _backfill(
    settings: ProducerSettings,
    asset_class: str,
    sink: TickSink,
    handoff: HandOff,
    metrics: ProducerMetrics,
    tail: tuple[int, set[str]] | None,
    stopping: threading.Event,
) -> tuple[Backfiller, GapWatch | None]:
    """The backfill thread and the gap watch that feeds it (None when backfill is off)."""
    wildcard = "*" in settings.symbols

    def symbols_to_backfill() -> list[str]:
        if not wildcard:
            return list(settings.symbols)
        # "*" cannot be enumerated: the symbols seen since start and in the backup's tail.
        seen = {s.decode() for s in sink.symbols_seen or ()}
        return sorted(seen | (tail[1] if tail else set()))

    def count_error(reason: str) -> None:
        metrics.backfill_errors.labels(reason).inc()

    backfiller = Backfiller(
        HistoricalSource(asset_class, settings, stopping, on_error=count_error),
        sink,
        settings,
        metrics,
        settings.backup_dir / asset_class / "backfill.json",
        symbols_to_backfill,
        stopping,
    )
    if not settings.backfill_enabled or settings.feed == "test":
        why = "BACKFILL_ENABLED=false" if not settings.backfill_enabled else "no test-feed history"
        log.info("backfill_off", reason=why)
        return backfiller, None
    return backfiller, GapWatch(handoff, backfiller, metrics, tail[0] if tail else None)


async def _shut_down(
    backfiller: Backfiller,
    handoff: HandOff,
    sink: TickSink,
    publisher: KafkaPublisher,
    backup: CsvBackupWriter,
    health: HealthServer,
) -> None:
    """The orderly stop after the stream: backfill, hand-off, sink, Kafka, backup."""
    await asyncio.to_thread(backfiller.join, BACKFILL_STOP_SECONDS)
    handoff.close()
    drained = await asyncio.to_thread(sink.join, DRAIN_ON_STOP_SECONDS)
    undelivered = await asyncio.to_thread(publisher.flush, FLUSH_ON_STOP_SECONDS)
    sink.stopped(undelivered)
    backup.close()
    health.stop()
    log.info(
        "producer_stopped",
        delivered=publisher.delivered,
        failed=publisher.failed,
        undelivered=undelivered,
        drained=drained,
        backfill_pending=backfiller.pending,
        still_spilled=sink.spill is not None,
        backup_rows=backup.rows_written,
    )


async def run_producer(spec: ProducerSpec, settings: ProducerSettings) -> None:
    metrics = ProducerMetrics(
        component=spec.service,
        per_symbol=settings.metrics_per_symbol,
        symbol_limit=settings.metrics_symbol_limit,
    )
    url = spec.stream_url(settings)
    kafka_conf = producer_config(
        settings, client_id=spec.service, queue_max_mib=settings.kafka_queue_max_mib
    )
    log.info(
        "producer_starting",
        stream_url=url,
        live_alpaca=settings.alpaca_api_key is not None,
        symbols=list(settings.symbols),
        channels=list(settings.channels),
        publish_mode=settings.publish_mode,
        backup_dir=str(settings.backup_dir),
        kafka=masked(kafka_conf),
        topic=settings.kafka_topic,
    )
    asset_class = spec.asset_class.value
    # Before the sink and the housekeeping touch the backup: where the last run stopped.
    backfill = settings.backfill_enabled and settings.feed != "test"
    tail = newest_ticks(settings.backup_dir, spec.asset_class) if backfill else None
    publisher = KafkaPublisher(kafka_conf, settings.kafka_topic, spec.service, asset_class, metrics)
    backup = CsvBackupWriter(
        settings.backup_dir,
        spec.asset_class,
        retention_days=settings.backup_retention_days,
        compress=settings.backup_compress,
    )
    handoff = HandOff(settings.handoff_max_messages, on_wait=metrics.handoff_waits.inc)
    sink = TickSink(
        handoff,
        asset_class,
        settings.feed,
        PriceChangeFilter(every_tick=settings.publish_mode == "every_tick"),
        backup,
        publisher,
        metrics,
        track_symbols="*" in settings.symbols,
    )
    backup.housekeeping()  # after the sink: a resumed spill's files must stay uncompressed
    connects = 0
    stopping = threading.Event()

    backfiller, gaps = _backfill(settings, asset_class, sink, handoff, metrics, tail, stopping)

    def on_connect() -> None:
        nonlocal connects
        connects += 1
        metrics.ws_connects.inc()
        if connects > 1:
            metrics.ws_reconnects.inc()
        log.info("stream_connected", url=url, connects=connects)
        if gaps is not None:
            gaps.on_connect(first=connects == 1)

    supervisor = StreamSupervisor(
        make_stream=lambda: spec.make_stream(settings, url),
        symbols=settings.symbols,
        channels=settings.channels,
        on_message=handoff.handler,
        on_frame=handoff.receive_frame,
        on_connect=on_connect,
        backoff=Backoff(settings.reconnect_initial_seconds, settings.reconnect_max_seconds),
        limit_backoff=Backoff(
            settings.reconnect_limit_seconds, settings.reconnect_limit_max_seconds
        ),
        on_limited=metrics.ws_connection_limited.inc,
    )
    readiness = Readiness(
        supervisor, handoff, sink, publisher, settings.stale_after_seconds, metrics
    )
    health = HealthServer(settings.http_host, settings.http_port, readiness)
    health.start()
    log.info("health_server_listening", port=health.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Not fatal: with Kafka down we still stream into the backup and report not-ready.
    await asyncio.to_thread(publisher.check_connection, 10.0)
    sink.start()
    if backfill:
        backfiller.start()
    gauges = asyncio.create_task(_refresh_gauges(readiness, stop))
    try:
        await supervisor.run(stop)
    finally:
        stop.set()
        await gauges
        stopping.set()
        await _shut_down(backfiller, handoff, sink, publisher, backup, health)
