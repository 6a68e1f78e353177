"""Runs a producer service: the stream, the tick pipeline, Kafka, the backup, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from tickpipe_common.backoff import Backoff
from tickpipe_common.health import HealthServer
from tickpipe_common.kafka_config import masked, producer_config
from tickpipe_common.logging import get_logger
from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.pipeline import TickPipeline
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.spec import ProducerSpec
from tickpipe_common.producer.stream import StreamSupervisor

log = get_logger(__name__)

FLUSH_ON_STOP_SECONDS = 10.0


class Readiness:
    """Ready = connected to the stream, data not stale, and Kafka taking ticks."""

    def __init__(
        self,
        supervisor: StreamSupervisor,
        pipeline: TickPipeline,
        publisher: KafkaPublisher,
        stale_after: float,
        metrics: ProducerMetrics,
    ) -> None:
        self._supervisor = supervisor
        self._pipeline = pipeline
        self._publisher = publisher
        self._stale_after = stale_after
        self._metrics = metrics

    def __call__(self) -> tuple[bool, dict[str, object]]:
        silent_for = self._pipeline.seconds_since_last_message()
        fresh = silent_for < self._stale_after
        kafka_ok, kafka = self._publisher.healthy()
        ready = self._supervisor.connected and fresh and kafka_ok
        self._metrics.ready.set(1 if ready else 0)
        self._metrics.ws_connected.set(1 if self._supervisor.connected else 0)
        return ready, {
            "stream_connected": self._supervisor.connected,
            "seconds_since_last_message": round(silent_for, 3),
            "kafka_ok": kafka_ok,
            **kafka,
        }


async def _poll_publisher(
    publisher: KafkaPublisher,
    readiness: Readiness,
    pipeline: TickPipeline,
    metrics: ProducerMetrics,
    stop: asyncio.Event,
) -> None:
    """Serve Kafka callbacks and refresh gauges between stream messages."""
    while not stop.is_set():
        publisher.poll(0)
        metrics.seconds_since_last_message.set(pipeline.seconds_since_last_message())
        readiness()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.1)


async def run_producer(spec: ProducerSpec, settings: ProducerSettings) -> None:
    metrics = ProducerMetrics(
        component=spec.service,
        per_symbol=settings.metrics_per_symbol,
        symbol_limit=settings.metrics_symbol_limit,
    )
    url = spec.stream_url(settings)
    kafka_conf = producer_config(settings, client_id=spec.service)
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
    publisher = KafkaPublisher(kafka_conf, settings.kafka_topic, spec.service, metrics)
    backup = CsvBackupWriter(settings.backup_dir)
    pipeline = TickPipeline(
        spec.asset_class,
        settings.feed,
        PriceChangeFilter(every_tick=settings.publish_mode == "every_tick"),
        backup,
        publisher,
        metrics,
    )
    connects = 0

    def on_connect() -> None:
        nonlocal connects
        connects += 1
        metrics.ws_connects.inc()
        if connects > 1:
            metrics.ws_reconnects.inc()
        log.info("stream_connected", url=url, connects=connects)

    supervisor = StreamSupervisor(
        make_stream=lambda: spec.make_stream(settings, url),
        symbols=settings.symbols,
        channels=settings.channels,
        on_message=pipeline.handle,
        on_connect=on_connect,
        backoff=Backoff(settings.reconnect_initial_seconds, settings.reconnect_max_seconds),
    )
    readiness = Readiness(supervisor, pipeline, publisher, settings.stale_after_seconds, metrics)
    health = HealthServer(settings.http_host, settings.http_port, readiness)
    health.start()
    log.info("health_server_listening", port=health.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Not fatal: with Kafka down we still stream into the backup and report not-ready.
    await asyncio.to_thread(publisher.check_connection, 10.0)
    poller = asyncio.create_task(_poll_publisher(publisher, readiness, pipeline, metrics, stop))
    try:
        await supervisor.run(stop)
    finally:
        stop.set()
        await poller
        undelivered = await asyncio.to_thread(publisher.flush, FLUSH_ON_STOP_SECONDS)
        backup.close()
        health.stop()
        log.info(
            "producer_stopped",
            delivered=publisher.delivered,
            failed=publisher.failed,
            undelivered=undelivered,
            backup_rows=backup.rows_written,
        )
