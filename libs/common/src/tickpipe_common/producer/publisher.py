"""Hands encoded ticks to an idempotent Kafka producer and tracks whether Kafka takes them.

Only the sink thread produces and polls (never the event loop). Nothing is kept per queued
tick on the Python side: every message of a kind shares one delivery callback object, and
after a client replacement the purged messages are re-queued from the delivery report's own
key, value and headers. The client's queue is bounded in bytes (``KAFKA_QUEUE_MAX_MIB``):
``produce`` answers False when it is full and the caller keeps the tick in the backup.

Delivery epochs (``rotate_epoch``): what was produced is counted per epoch, each epoch with
callback objects of its own, so the sink can learn, without anything per tick, up to where in
the backup every tick has been acknowledged. An epoch begins at a mark (a backup position) and
is complete when each of its messages was acknowledged or finally failed. Two epochs at most:
the sink rotates about once a second, and only when the previous epoch is complete; everything
produced before the current epoch's mark is then acknowledged — the delivery watermark a
restart re-publishes from (``sink``), since librdkafka's queue dies with a SIGKILL.

Backfilled ticks (``produce_many(..., backfilled=True)``) have callbacks of their own, whose
headers add ``tickpipe-backfill: 1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tickpipe_common.backoff import Backoff
from tickpipe_common.kafka_produce import produce_with_room
from tickpipe_common.logging import KAFKA_ERRORS_LOGGER, get_logger
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.schema import (
    HEADER_BACKFILL,
    SCHEMA_VERSION_AMENDMENTS,
    V3_KINDS,
    kafka_headers,
)

log = get_logger(__name__)
kafka_errors = get_logger(KAFKA_ERRORS_LOGGER)  # rate-limited: the client repeats its errors

# A message still undelivered this long after the last acknowledgement means Kafka is not
# taking ticks right now: report not-ready (the CSV backup keeps everything meanwhile).
STALLED_AFTER_SECONDS = 10.0

# Delivery errors that mean "this client gave the message up on purpose" (purge()).
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

# Errors that mean this client may not do its job (a wrong password, a missing ACL): no retry
# mends them, a person must. Not ready, saying which, until a tick is delivered again.
_ACCESS_DENIED = frozenset(
    {
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


# One delivery-latency observation per this many acknowledgements of a kind: the histogram's
# quantiles stay true, and the acknowledgement path costs a counter increment per tick.
LATENCY_SAMPLE_EVERY = 16


class _Delivery:
    """The delivery callback of every message of one kind (no closure per tick).

    librdkafka calls it once per message from ``poll``, so on success it does the least: count.
    The publisher folds the counts into its totals and metrics once per ``poll`` or ``flush``
    (``_collect_acks``), not per tick (a Prometheus increment takes a lock).
    """

    __slots__ = ("_counter", "_latency", "_publisher", "acked", "collected", "failed", "headers")

    def __init__(self, publisher: KafkaPublisher, kind: str, backfilled: bool = False) -> None:
        self._publisher = publisher
        # The headers of this kind's messages: their schema version is the kind's.
        self.headers = publisher.headers_for(kind)
        if backfilled:
            self.headers = [*self.headers, (HEADER_BACKFILL, b"1")]
        self._counter = publisher.metrics.published.labels(kind, publisher.asset_class)
        self._latency = publisher.metrics.delivery_latency
        self.acked = 0
        self.collected = 0
        self.failed = 0  # given up for good (not re-queued)

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked += 1
            if not self.acked % LATENCY_SAMPLE_EVERY:
                # librdkafka's own produce()→ack time, not delayed by when we serve callbacks.
                latency = msg.latency()
                if latency is not None:
                    self._latency.observe(latency)
            return
        self._publisher.on_failed(err, msg, self)

    def collect(self) -> int:
        """Acknowledgements since the last call (and counted in the metric)."""
        new = self.acked - self.collected
        if new:
            self.collected = self.acked
            self._counter.inc(new)
        return new


class _Epoch:
    """Messages produced since ``mark``, with the callbacks that count their outcomes."""

    __slots__ = ("backfill_callbacks", "callbacks", "mark", "produced")

    def __init__(self, mark: object) -> None:
        self.mark = mark
        self.callbacks: dict[str, _Delivery] = {}  # by kind
        self.backfill_callbacks: dict[str, _Delivery] = {}
        self.produced = 0

    def all_callbacks(self) -> list[_Delivery]:
        return [*self.callbacks.values(), *self.backfill_callbacks.values()]

    def complete(self) -> bool:
        done = sum(cb.acked + cb.failed for cb in self.all_callbacks())
        return done >= self.produced


class KafkaPublisher:
    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        service: str,
        asset_class: str,
        metrics: ProducerMetrics,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        *,
        wait_for_room: bool = False,
    ) -> None:
        """``wait_for_room``: ``produce`` waits until the queue takes the message (replay);
        otherwise it answers False at once when the queue is full (the live sink spills)."""
        self._conf = {**conf, "error_cb": self._on_error}
        self._topic = topic
        self._headers = kafka_headers(service)
        self._headers_v3 = kafka_headers(service, SCHEMA_VERSION_AMENDMENTS)
        self.asset_class = asset_class
        self.metrics = metrics
        self._factory = producer_factory
        self._producer = producer_factory(self._conf)
        self._epoch = _Epoch(None)
        self._previous: _Epoch | None = None
        self._callbacks = self._epoch.callbacks
        self._attempts: int | None = None if wait_for_room else 2
        self._wait_seconds = 0.5 if wait_for_room else 0.0
        self._fatal: KafkaError | None = None
        # A fatal error that a new client meets again (a missing ACL): replace it with backoff.
        self._replace_backoff = Backoff(1.0, 60.0)
        self._replace_at = 0.0
        self.denied: str | None = None
        self.brokers_down = False
        self.last_ack = time.monotonic()
        self.delivered = 0  # acknowledged, as of the last poll or flush
        self.failed = 0
        self.requeued = 0

    def headers_for(self, kind: str) -> list[tuple[str, str | bytes | None]]:
        """Version 3 for the kinds only it has (``wire`` writes them so), else version 1."""
        return self._headers_v3 if kind in V3_KINDS else self._headers

    def _collect_acks(self) -> None:
        """Fold the callbacks' acknowledgement counts in (on the thread that polls)."""
        new = 0
        for epoch in (self._epoch, self._previous):
            if epoch is not None:
                for callback in epoch.all_callbacks():
                    new += callback.collect()
        if new:
            self.delivered += new
            self.last_ack = time.monotonic()
            self.brokers_down = False
            if self.denied is not None:
                self.access_restored()

    def produce(self, key: bytes, value: bytes, kind: str) -> bool:
        """Queue one message; False if the local queue is full (nothing was queued)."""
        callback = self._callbacks.get(kind)
        if callback is None:
            callback = self._callbacks[kind] = _Delivery(self, kind)
        try:  # the common case in one call; a full queue or a fatal error takes the long way
            self._producer.produce(
                self._topic, value, key, headers=callback.headers, on_delivery=callback
            )
        except (BufferError, KafkaException):
            if not self._produce(key, value, callback.headers, callback):
                return False
        self._epoch.produced += 1
        return True

    def produce_many(
        self, messages: list[tuple[bytes, bytes, str]], *, backfilled: bool = False
    ) -> int:
        """``produce`` each (key, value, kind) in order; how many were queued before the first
        that did not fit (``len(messages)``: all of them). The sink's per-tick loop.
        ``backfilled``: the messages carry the backfill header (``HEADER_BACKFILL``)."""
        taken = self._produce_many(messages, backfilled)
        self._epoch.produced += taken
        return taken

    def _produce_many(self, messages: list[tuple[bytes, bytes, str]], backfilled: bool) -> int:
        producer, topic = self._producer, self._topic
        callbacks = self._epoch.backfill_callbacks if backfilled else self._callbacks
        for i, (key, value, kind) in enumerate(messages):
            callback = callbacks.get(kind)
            if callback is None:
                callback = callbacks[kind] = _Delivery(self, kind, backfilled)
            try:
                producer.produce(topic, value, key, headers=callback.headers, on_delivery=callback)
            except (BufferError, KafkaException):
                if not self._produce(key, value, callback.headers, callback):
                    return i
                producer = self._producer  # a fatal error may have replaced the client
        return len(messages)

    def _produce(self, key: Any, value: Any, headers: Any, callback: _Delivery) -> bool:
        for attempt in range(2):
            try:
                return produce_with_room(
                    self._producer,
                    self._topic,
                    value,
                    key,
                    headers,
                    callback,
                    attempts=self._attempts,
                    wait_seconds=self._wait_seconds,
                )
            except KafkaException as exc:
                # After a fatal error (e.g. the idempotence state is lost) the client refuses
                # every message: replace it now and try once more.
                if attempt == 1 or not (exc.args and exc.args[0].fatal()):
                    raise
                self._fatal = exc.args[0]
                if not self._replace_if_due():
                    # Replaced moments ago and refused again: the caller keeps the tick in
                    # the backup (the sink spills, and re-publishes once a client works).
                    return False
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def on_failed(self, err: KafkaError, msg: Message, callback: _Delivery) -> None:
        if err.code() in _PURGED:
            # The client holding it was replaced (see _replace_producer): hand the message to
            # the new one. A purged in-flight message may already be stored; the consumer
            # recognises the copy by its identity.
            self.requeued += 1
            if self._produce(msg.key(), msg.value(), msg.headers(), callback):
                return
            err_name = "queue_full"  # still in the backup, re-published after a restart
        else:
            err_name = err.name()
            self._note_denied(err)
            if err.fatal():
                self._fatal = err
        self.failed += 1
        callback.failed += 1
        self.metrics.publish_errors.labels(err_name).inc()

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks; replace the producer after a fatal (idempotence) error."""
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:  # a fatal error, raised rather than passed to error_cb
            error = exc.args[0] if exc.args else None
            if not isinstance(error, KafkaError) or not error.fatal():
                raise
            self._note_denied(error)
            self._fatal = error
        self._collect_acks()
        self.metrics.queue_depth.set(len(self._producer))
        self._replace_if_due()

    def _replace_if_due(self) -> bool:
        """Replace the client after a fatal error, at once the first time, then with backoff
        (a client refused for a missing ACL is refused again). True if it was replaced."""
        if self._fatal is None or time.monotonic() < self._replace_at:
            return False
        self._replace_producer()
        self._replace_at = time.monotonic() + self._replace_backoff.next_delay()
        return True

    def _note_denied(self, err: KafkaError) -> None:
        if err.code() not in _ACCESS_DENIED:
            return
        if self.denied is None:
            log.error(
                "kafka_access_denied",
                code=err.name(),
                error=err.str(),
                fix="check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, and that the user may "
                "Write and Describe the topic",
            )
        self.denied = f"{err.name()}: {err.str()}"

    def access_restored(self) -> None:
        """A tick was delivered: whatever refused this client earlier no longer does."""
        self.denied = None
        self._replace_backoff.reset()

    def _replace_producer(self) -> None:
        """Swap in a new client without losing what the old one still held.

        Purging the old client fires each pending message's delivery callback with a purge
        error, and that callback re-queues the message on the new client (in order).
        """
        old, pending = self._producer, len(self._producer)
        log.error(
            "kafka_producer_fatal",
            error=str(self._fatal),
            action="recreating producer",
            requeueing=pending,
        )
        self._fatal = None
        self._producer = self._factory(self._conf)
        old.purge(in_queue=True, in_flight=True, blocking=False)
        old.poll(0)

    def rotate_epoch(self, mark: object) -> object | None:
        """Begin a new delivery epoch at ``mark`` if the previous one is complete; returns the
        mark up to which everything produced is now acknowledged (the ending epoch's start),
        or None when nothing changed (the previous epoch still waits for acknowledgements)."""
        if self._previous is not None:
            self._collect_acks()
            if not self._previous.complete():
                return None
        self._previous, self._epoch = self._epoch, _Epoch(mark)
        self._callbacks = self._epoch.callbacks
        return self._previous.mark

    def pending(self) -> int:
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        remaining = int(self._producer.flush(timeout))
        self._collect_acks()
        self.metrics.queue_depth.set(remaining)
        return remaining

    def check_connection(self, timeout: float) -> bool:
        try:
            self._producer.list_topics(self._topic, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
            log.warning("kafka_unreachable", error=str(exc))
            self.brokers_down = True
            return False
        self.brokers_down = False
        self.last_ack = time.monotonic()
        return True

    def healthy(self) -> tuple[bool, dict[str, object]]:
        pending = len(self._producer)
        stalled = pending > 0 and time.monotonic() - self.last_ack > STALLED_AFTER_SECONDS
        ok = not self.brokers_down and not stalled and self.denied is None
        details: dict[str, object] = {
            "kafka_pending": pending,
            "kafka_brokers_down": self.brokers_down,
        }
        if self.denied is not None:
            details["kafka_error"] = self.denied
        return ok, details

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.brokers_down = True
        if err.fatal():
            self._fatal = err  # replaced at the next poll()
        self._note_denied(err)
        kafka_errors.warning(
            "kafka_client_error", error=err.str(), code=err.name(), fatal=err.fatal()
        )
