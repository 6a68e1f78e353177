"""Prometheus metrics of a producer.

Labels are bounded whatever the symbol universe: kind, asset class, error reason. Per-symbol
series exist only with ``METRICS_PER_SYMBOL=true``, and then for at most
``METRICS_SYMBOL_LIMIT`` symbols (in the order they are first seen); ticks of any further
symbol are counted under ``symbol="other"``.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from tickpipe_common.service_metrics import ReadyGauge, register_service_info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_GAP_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14_400, 86_400)

OTHER_SYMBOLS = "other"


class SymbolLabels:
    """Maps symbols to label values: the first ``limit`` distinct symbols keep their own,
    every later one is folded into ``"other"``, so the series count stays at limit + 1."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self._limit = limit
        self._own: set[str] = set()

    def __call__(self, symbol: str) -> str:
        if symbol in self._own:
            return symbol
        if len(self._own) < self._limit:
            self._own.add(symbol)
            return symbol
        return OTHER_SYMBOLS


class ProducerMetrics:
    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        component: str | None = None,
        per_symbol: bool = False,
        symbol_limit: int = 50,
    ) -> None:
        """``component`` (the service name) adds ``tickpipe_service_info`` and the shared
        ``tickpipe_service_ready``; tools that only borrow the metrics (replay) leave it out."""
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
        self.publish_errors.labels("queue_full")  # exported from the start, at 0
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
        self.ws_connected = Gauge(
            "tickpipe_producer_ws_connected",
            "1 while the WebSocket stream is connected and authenticated, else 0.",
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
        self.backup_ok = Gauge(
            "tickpipe_producer_backup_ok",
            "1 while the CSV backup takes every row; 0 after a failed write (disk full) until "
            "a write succeeds again. Publishing goes on either way.",
            registry=registry,
        )
        self.backup_ok.set(1)
        self.spilling = Gauge(
            "tickpipe_producer_spilling",
            "1 while the Kafka queue was full and ticks go to the backup only, to be "
            "re-published from it as Kafka takes them again.",
            registry=registry,
        )
        self.republished = Counter(
            "tickpipe_producer_republished_total",
            "Ticks re-published from the backup after the Kafka queue had been full.",
            registry=registry,
        )
        self.handling_errors = Counter(
            "tickpipe_producer_message_errors_total",
            "Stream messages whose handling raised an unexpected error (logged, skipped; "
            "the rest of the frame is handled).",
            registry=registry,
        )
        self.handoff_depth = Gauge(
            "tickpipe_producer_handoff_messages",
            "Messages received from the WebSocket and not yet taken by the sink thread.",
            registry=registry,
        )
        self.handoff_waits = Counter(
            "tickpipe_producer_handoff_waits_total",
            "Times the WebSocket loop waited because the hand-off to the sink was full "
            "(HANDOFF_MAX_MESSAGES): the sink is not keeping up.",
            registry=registry,
        )
        self.ws_connection_limited = Counter(
            "tickpipe_producer_ws_connection_limit_total",
            'Connects refused with 406 "connection limit exceeded" (another client on the key, '
            "or a dropped connection's slot not yet freed); retried after RECONNECT_LIMIT_SECONDS.",
            registry=registry,
        )
        self.gaps = Counter(
            "tickpipe_producer_gaps_total",
            "Gaps in the stream to backfill: after a reconnect, or at start-up from the newest "
            "tick of the backup (reason).",
            ("reason",),
            registry=registry,
        )
        for reason in ("reconnect", "restart"):
            self.gaps.labels(reason)
        self.gap_seconds = Histogram(
            "tickpipe_producer_gap_seconds",
            "Length of each gap: from the newest exchange time seen before it to the first "
            "after it (before the BACKFILL_MARGIN_SECONDS widening).",
            buckets=_GAP_BUCKETS,
            registry=registry,
        )
        self.backfilled = Counter(
            "tickpipe_producer_ticks_backfilled_total",
            "Ticks fetched from the historical API for a gap and handed to the pipeline "
            "(published with the tickpipe-backfill header; overlap with the stream included).",
            kind_labels,
            registry=registry,
        )
        self.backfill_errors = Counter(
            "tickpipe_producer_backfill_errors_total",
            "Historical API requests that failed (rate_limited: 429; request_failed: any other "
            "error; both retried with backoff) and gaps given up after the retries (gave_up).",
            ("reason",),
            registry=registry,
        )
        for reason in ("rate_limited", "request_failed", "gave_up"):
            self.backfill_errors.labels(reason)
        self.backfill_passes = Counter(
            "tickpipe_producer_backfill_passes_total",
            "Backfill passes finished, by outcome (done, failed); a SIP gap has two passes.",
            ("outcome",),
            registry=registry,
        )
        for outcome in ("done", "failed"):
            self.backfill_passes.labels(outcome)
        self.backfill_pending = Gauge(
            "tickpipe_producer_backfill_pending",
            "Backfill passes waiting or running (a gap waits for the first live tick after it; "
            "a SIP gap's second pass for BACKFILL_SIP_DELAY_SECONDS).",
            registry=registry,
        )
        ready_help = "1 when the stream is live and Kafka takes ticks, else 0."
        self.ready: ReadyGauge | Gauge
        if component is not None:
            register_service_info(component, registry)
            self.ready = ReadyGauge("tickpipe_producer_ready", ready_help, component, registry)
        else:
            self.ready = Gauge("tickpipe_producer_ready", ready_help, registry=registry)

        self.tracks_symbols = per_symbol
        self._symbols: SymbolLabels | None = None
        self._last_ts: dict[str, float] = {}
        if per_symbol:
            self._symbols = SymbolLabels(symbol_limit)
            self.symbol_ticks = Counter(
                "tickpipe_producer_symbol_ticks_total",
                "Ticks received per symbol (METRICS_PER_SYMBOL; symbols beyond "
                'METRICS_SYMBOL_LIMIT are counted as symbol="other").',
                ("symbol",),
                registry=registry,
            )
            self.last_tick_timestamp = Gauge(
                "tickpipe_producer_last_tick_timestamp_seconds",
                "Exchange time (Unix seconds) of the newest tick received per symbol "
                "(METRICS_PER_SYMBOL).",
                ("symbol",),
                registry=registry,
            )

    def symbol_tick(self, symbol: str, ts_ns: int) -> None:
        """Per-symbol series of one received tick (only with ``per_symbol``)."""
        if self._symbols is None:
            return
        label = self._symbols(symbol)
        self.symbol_ticks.labels(label).inc()
        ts = ts_ns / 1e9
        if ts > self._last_ts.get(label, 0.0):  # "other" shows the newest of its symbols
            self._last_ts[label] = ts
            self.last_tick_timestamp.labels(label).set(ts)
