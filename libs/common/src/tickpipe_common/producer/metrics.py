"""Prometheus metrics of a producer. Labels are bounded: kind, asset class, error reason."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        kind_labels = ("kind", "asset_class")
        self.received = Counter(
            "tickpipe_producer_ticks_received_total",
            "Market-data messages received from the stream and normalised.",
            kind_labels,
            registry=registry,
        )
        self.filtered = Counter(
            "tickpipe_producer_ticks_filtered_total",
            "Ticks not published because their price did not change (PUBLISH_MODE=on_change).",
            kind_labels,
            registry=registry,
        )
        self.published = Counter(
            "tickpipe_producer_ticks_published_total",
            "Ticks acknowledged by Kafka (acks=all).",
            kind_labels,
            registry=registry,
        )
        self.publish_errors = Counter(
            "tickpipe_producer_publish_errors_total",
            "Ticks Kafka did not take, by librdkafka error name (the CSV backup still has them).",
            ("reason",),
            registry=registry,
        )
        self.malformed = Counter(
            "tickpipe_producer_malformed_messages_total",
            "Stream messages that could not be turned into a tick (logged, skipped).",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "tickpipe_producer_delivery_latency_seconds",
            "From handing a tick to the Kafka client to the broker's acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "tickpipe_producer_kafka_queue_messages",
            "Messages waiting in the librdkafka queue for delivery.",
            registry=registry,
        )
        self.ws_connects = Counter(
            "tickpipe_producer_ws_connects_total",
            "Successful WebSocket connects (connected and authenticated).",
            registry=registry,
        )
        self.ws_reconnects = Counter(
            "tickpipe_producer_ws_reconnects_total",
            "Connects after the first one: each is a lost and re-established stream.",
            registry=registry,
        )
        self.seconds_since_last_message = Gauge(
            "tickpipe_producer_seconds_since_last_message",
            "Seconds since the stream last delivered a market-data message.",
            registry=registry,
        )
        self.backup_rows = Counter(
            "tickpipe_producer_backup_rows_total",
            "Rows appended to the CSV backup.",
            registry=registry,
        )
        self.backup_bytes = Counter(
            "tickpipe_producer_backup_bytes_total",
            "Bytes appended to the CSV backup.",
            registry=registry,
        )
        self.backup_errors = Counter(
            "tickpipe_producer_backup_errors_total",
            "Ticks the CSV backup could not write (disk full, permissions).",
            registry=registry,
        )
        self.ready = Gauge(
            "tickpipe_producer_ready",
            "1 when the stream is live and Kafka takes ticks, else 0.",
            registry=registry,
        )
