"""``tickpipe-consumer [run|migrate]``: the entry point, and the one place the parts are wired.

``run`` (the default) applies the migrations (APPLY_MIGRATIONS), then consumes until SIGTERM
or SIGINT. ``migrate`` only applies the migrations and the retention policy, then exits:
for deployments that run schema changes as a separate job.

Exit codes: 0 clean stop, 1 failure, 2 configuration error (the message names the variable).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from prometheus_client import REGISTRY, CollectorRegistry

from tickpipe_common.backoff import Backoff
from tickpipe_common.health import HealthServer
from tickpipe_common.kafka_config import consumer_config, masked, producer_config
from tickpipe_common.logging import KAFKA_ERRORS_LOGGER, configure_logging, get_logger
from tickpipe_common.settings import load_settings
from tickpipe_consumer.db import connect
from tickpipe_consumer.dlq import DlqPublisher
from tickpipe_consumer.loop import ConsumerLoop
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_consumer.migrations import apply_migrations, apply_retention, database_features
from tickpipe_consumer.settings import ConsumerSettings
from tickpipe_consumer.writer import TickWriter

SERVICE = "consumer"
_EXIT_FLUSH_SECONDS = 5.0
_QUIET_SQLSTATES = frozenset({"42P07", "42710"})  # duplicate_table, duplicate_object

log = get_logger(SERVICE)
kafka_errors = get_logger(KAFKA_ERRORS_LOGGER)  # rate-limited: the clients repeat their errors


class ConsumerService:
    """The running consumer: health server, database preparation, Kafka clients, the loop."""

    def __init__(self, settings: ConsumerSettings, registry: CollectorRegistry = REGISTRY) -> None:
        self._settings = settings
        self._metrics = ConsumerMetrics(registry)
        client_id = f"{SERVICE}-{socket.gethostname()}"
        # Raises ValueError for contradictory Kafka security settings (a configuration error).
        self._consumer_conf = consumer_config(settings, client_id, settings.kafka_group_id)
        self._producer_conf = producer_config(settings, f"{client_id}-dlq")
        self._loop: ConsumerLoop | None = None
        self._stage = "starting"
        self._fatal: str | None = None
        self._stop: threading.Event | None = None
        self._health = HealthServer(
            settings.http_host, settings.http_port, self._readiness, registry
        )

    @property
    def health_port(self) -> int:
        return self._health.port

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        self._stop = stop
        self._health.start()
        try:
            return self._run(stop)
        finally:
            self._health.stop()

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        if self._loop is None:
            return False, {"stage": self._stage}
        return self._loop.readiness()

    def _run(self, stop: threading.Event) -> int:
        s = self._settings
        log.info(
            "consumer_starting",
            topic=s.kafka_topic,
            dlq_topic=s.dlq_topic,
            group=s.kafka_group_id,
            kafka=masked(self._consumer_conf),
            health_port=self.health_port,
        )
        self._stage = "preparing database"
        if not self._prepare_database(stop):
            log.info("consumer_stopped", exit_code=0, stage=self._stage)
            return 0

        writer = TickWriter(
            s.database_url.get_secret_value(),
            connect_timeout_seconds=s.db_connect_timeout_seconds,
            statement_timeout_seconds=s.db_statement_timeout_seconds,
        )
        kafka_log = logging.getLogger("librdkafka")
        producer = Producer(
            {**self._producer_conf, "error_cb": self._on_kafka_error, "logger": kafka_log}
        )
        consumer = Consumer(
            {**self._consumer_conf, "error_cb": self._on_kafka_error, "logger": kafka_log}
        )
        loop = ConsumerLoop(
            consumer,
            writer,
            DlqPublisher(producer, s.dlq_topic, self._metrics),
            self._metrics,
            stop,
            batch_max_messages=s.batch_max_messages,
            batch_max_seconds=s.batch_max_seconds,
            max_future_seconds=s.max_future_seconds,
            retry_initial_seconds=s.db_retry_initial_seconds,
            retry_max_seconds=s.db_retry_max_seconds,
            shutdown_timeout_seconds=s.shutdown_timeout_seconds,
        )
        self._loop = loop
        consumer.subscribe(
            [s.kafka_topic],
            on_assign=loop.on_assign,
            on_revoke=loop.on_revoke,
            on_lost=loop.on_lost,
        )
        exit_code = 0
        try:
            loop.run()
        except KafkaException as exc:
            log.error("consumer_failed", error=str(exc))
            exit_code = 1
        finally:
            # Leave the group now, so the partitions move to another replica at once rather
            # than after the session timeout. Nothing is committed here: every batch was
            # committed (or deliberately left uncommitted) by the loop.
            consumer.close()
            # Every DLQ letter of a committed batch was flushed before its commit; this only
            # covers letters of an abandoned batch, which will be sent again anyway.
            unsent = producer.flush(_EXIT_FLUSH_SECONDS)
            if unsent:
                log.warning("dlq_unflushed_at_exit", pending=unsent)
            writer.close()
        if self._fatal is not None:
            exit_code = 1
        log.info("consumer_stopped", exit_code=exit_code)
        return exit_code

    def _prepare_database(self, stop: threading.Event) -> bool:
        """Migrate (if configured) and check the schema, retrying while the database is away.

        False if ``stop`` was set first. Errors in the migrations themselves are not retried:
        they need a person, and a crash-looping pod is how they get one.
        """
        s = self._settings
        backoff = Backoff(s.db_retry_initial_seconds, s.db_retry_max_seconds)
        while not stop.is_set():
            try:
                features = _prepare(s)
            except (psycopg.OperationalError, _SchemaMissingError) as exc:
                self._metrics.db_errors.inc()
                delay = backoff.next_delay()
                log.warning("database_not_ready", error=str(exc), retry_in_seconds=round(delay, 2))
                stop.wait(delay)
                continue
            log.info("database_features", **features)
            return True
        return False

    def _on_kafka_error(self, error: KafkaError) -> None:
        # Transient errors (a broker restarting, all brokers down for a while) are retried
        # by librdkafka itself; only a fatal one (the idempotent DLQ producer fenced) ends us.
        if error.fatal():
            log.error("kafka_fatal_error", error=str(error), code=error.name())
            self._fatal = str(error)
            if self._stop is not None:
                self._stop.set()
            return
        kafka_errors.warning("kafka_error", error=str(error), code=error.name())


class _SchemaMissingError(Exception):
    """APPLY_MIGRATIONS is off and nobody has run `tickpipe-consumer migrate` yet."""


def _connect(settings: ConsumerSettings) -> psycopg.Connection[Any]:
    conn = connect(
        settings.database_url.get_secret_value(),
        connect_timeout=settings.db_connect_timeout_seconds,
        application_name=f"{SERVICE}-migrate",
    )
    # Surface the migrations' RAISE NOTICE/WARNING lines (e.g. "timescaledb is not available"),
    # but not PostgreSQL's "already exists, skipping" from every IF NOT EXISTS on a re-run.
    conn.add_notice_handler(_log_notice)
    return conn


def _log_notice(diag: psycopg.errors.Diagnostic) -> None:
    if diag.sqlstate in _QUIET_SQLSTATES:
        return
    log.info("database_notice", severity=diag.severity, text=diag.message_primary)


def _prepare(settings: ConsumerSettings) -> dict[str, object]:
    with _connect(settings) as conn:
        if settings.apply_migrations:
            applied = apply_migrations(conn)
            retention = apply_retention(conn, settings.retention_days)
            log.info("migrations_checked", applied=applied, retention=retention)
        if conn.execute("SELECT to_regclass('market_ticks')").fetchone() == (None,):
            raise _SchemaMissingError(
                "table market_ticks does not exist: run `tickpipe-consumer migrate` "
                "or set APPLY_MIGRATIONS=true"
            )
        return database_features(conn)


def migrate(settings: ConsumerSettings) -> int:
    """The ``migrate`` command: one attempt, exit code 0 or 1."""
    try:
        with _connect(settings) as conn:
            applied = apply_migrations(conn)
            retention = apply_retention(conn, settings.retention_days)
            features = database_features(conn)
    except psycopg.Error as exc:
        log.error("migrate_failed", error=str(exc))
        return 1
    log.info("database_features", **features)
    log.info("migrations_done", applied=applied, retention=retention)
    return 0


def _install_signal_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tickpipe-consumer",
        description="Kafka topic market_ticks → PostgreSQL/TimescaleDB table market_ticks. "
        "Configured by environment variables (see the README).",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("run", "migrate"),
        default="run",
        help="run: consume (the default); migrate: apply the schema migrations and exit",
    )
    args = parser.parse_args(argv)
    settings = load_settings(ConsumerSettings)  # exits 2, naming the variable, when invalid
    configure_logging(SERVICE, settings.log_level, settings.log_format)
    if args.command == "migrate":
        return migrate(settings)
    try:
        service = ConsumerService(settings)
    except ValueError as exc:
        print(f"configuration error in ConsumerSettings: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    _install_signal_handlers(stop)
    return service.run(stop)


if __name__ == "__main__":
    raise SystemExit(main())
