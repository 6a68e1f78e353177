"""The consumer's Prometheus metrics. Label values come from bounded sets only: tick kinds,
reject reasons, and the partitions of one topic."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from tickpipe_common.schema import RejectReason
from tickpipe_common.service_metrics import ReadyGauge, register_service_info

COMPONENT = "consumer"

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000)
_COMMIT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Exchange time → committed row: sub-second when healthy, minutes during an outage or replay.
_LATENCY_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class ConsumerMetrics:
    """One instance per process (tests make their own registry per consumer they run)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.messages_consumed = Counter(
            "tickpipe_consumer_messages_consumed",
            "Messages read from the tick topic (a message read again after a rebalance counts "
            "again).",
            registry=registry,
        )
        self.rows_inserted = Counter(
            "tickpipe_consumer_rows_inserted",
            "Rows newly inserted into market_ticks, by tick kind.",
            ["kind"],
            registry=registry,
        )
        self.duplicates_skipped = Counter(
            "tickpipe_consumer_duplicates_skipped",
            "Valid ticks not inserted because the same tick was already stored (replays, "
            "redelivery).",
            registry=registry,
        )
        self.dlq_messages = Counter(
            "tickpipe_consumer_dlq_messages",
            "Messages delivered to the dead-letter topic, by reject reason.",
            ["reason"],
            registry=registry,
        )
        for reason in RejectReason:  # every reason exported from the start, at 0
            self.dlq_messages.labels(reason=reason.value)
        self.batch_size = Histogram(
            "tickpipe_consumer_batch_size",
            "Messages per batch.",
            buckets=_BATCH_SIZES,
            registry=registry,
        )
        self.batch_commit_seconds = Histogram(
            "tickpipe_consumer_batch_commit_seconds",
            "Duration of a successful database transaction for one batch (COPY, INSERT, COMMIT).",
            buckets=_COMMIT_SECONDS,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            "tickpipe_consumer_end_to_end_latency_seconds",
            "Exchange timestamp of a tick to the commit of the transaction that stored it, "
            "observed on a sample of each batch's inserted rows (trades, quotes, order books; "
            "bars are left out, their timestamp is the start of their interval).",
            buckets=_LATENCY_SECONDS,
            registry=registry,
        )
        self.lag = Gauge(
            "tickpipe_consumer_lag_messages",
            "Messages in an assigned partition after the last committed offset.",
            ["partition"],
            registry=registry,
        )
        self.db_errors = Counter(
            "tickpipe_consumer_db_errors",
            "Failed database attempts (connection, write or health check).",
            registry=registry,
        )
        self.db_retries = Counter(
            "tickpipe_consumer_db_retries",
            "Retries of a batch write after a database error.",
            registry=registry,
        )
        register_service_info(COMPONENT, registry)
        self.ready = ReadyGauge(
            "tickpipe_consumer_ready",
            "1 when the consumer is in its group and the database answers, else 0.",
            COMPONENT,
            registry,
        )
