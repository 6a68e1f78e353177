"""Publishes ticks to Kafka with an idempotent producer and tracks whether Kafka is taking them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tickpipe_common.backoff import Backoff
from tickpipe_common.logging import KAFKA_ERRORS_LOGGER, get_logger
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.schema import Tick, encode_tick, kafka_headers

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


class KafkaPublisher:
    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        service: str,
        metrics: ProducerMetrics,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._conf = {**conf, "error_cb": self._on_error}
        self._topic = topic
        self._headers = kafka_headers(service)
        self._metrics = metrics
        self._factory = producer_factory
        self._producer = producer_factory(self._conf)
        self._fatal: KafkaError | None = None
        # A fatal error that a new client meets again (a missing ACL): replace it with backoff.
        self._replace_backoff = Backoff(1.0, 60.0)
        self._replace_at = 0.0
        self._denied: str | None = None
        self._brokers_down = False
        self._last_ack = time.monotonic()
        self.delivered = 0
        self.failed = 0
        self.requeued = 0

    def publish(self, tick: Tick, count_drop: bool = True) -> bool:
        """Hand one tick to the Kafka client; False if its local queue is full.

        A caller that will retry (replay) passes ``count_drop=False``; the live path does not
        retry, since the tick is already in the CSV backup and the stream does not wait.
        """
        kind, asset_class = tick.kind.value, tick.asset_class.value

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.delivered += 1
                self._last_ack = time.monotonic()
                self._brokers_down = False
                self._denied = None
                self._replace_backoff.reset()
                self._metrics.published.labels(kind, asset_class).inc()
                # librdkafka's own produce()→ack time, not delayed by when we serve callbacks.
                latency = msg.latency()
                if latency is not None:
                    self._metrics.delivery_latency.observe(latency)
                return
            if err.code() in _PURGED:
                # The client holding it was replaced (see _replace_producer): hand the tick to
                # the new one. A purged in-flight message may already be stored; the consumer
                # recognises the copy by its identity.
                self.requeued += 1
                self.publish(tick, count_drop)
                return
            self.failed += 1
            self._metrics.publish_errors.labels(err.name()).inc()
            self._note_denied(err)
            if err.fatal():
                self._fatal = err

        value = encode_tick(tick)
        for attempt in range(2):
            try:
                self._producer.produce(
                    self._topic,
                    key=tick.symbol.encode(),
                    value=value,
                    headers=self._headers,
                    on_delivery=on_delivery,
                )
                break
            except KafkaException as exc:
                # After a fatal error (e.g. the idempotence state is lost) the client refuses
                # every message: replace it now and try once more.
                if attempt == 0 and exc.args and exc.args[0].fatal():
                    self._fatal = exc.args[0]
                    if self._replace_if_due():
                        continue
                    # Replaced moments ago and refused again: the tick is in the backup only.
                    self.failed += 1
                    self._metrics.publish_errors.labels(exc.args[0].name()).inc()
                    return False
                raise
            except BufferError:
                if attempt == 0:
                    self._producer.poll(0.05)  # serve callbacks to make room, then try once more
                    continue
                if count_drop:
                    self.failed += 1
                    self._metrics.publish_errors.labels("queue_full").inc()
                return False
        self._producer.poll(0)
        return True

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
        self._metrics.queue_depth.set(len(self._producer))
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
        if self._denied is None:
            log.error(
                "kafka_access_denied",
                code=err.name(),
                error=err.str(),
                fix="check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD, and that the user may "
                "Write and Describe the topic",
            )
        self._denied = f"{err.name()}: {err.str()}"

    def _replace_producer(self) -> None:
        """Swap in a new client without losing what the old one still held.

        Purging the old client fires each pending message's delivery callback with a purge
        error, and that callback re-publishes the tick through the new client (in order).
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

    def flush(self, timeout: float) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        remaining = int(self._producer.flush(timeout))
        self._metrics.queue_depth.set(remaining)
        return remaining

    def check_connection(self, timeout: float) -> bool:
        try:
            self._producer.list_topics(self._topic, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
            log.warning("kafka_unreachable", error=str(exc))
            self._brokers_down = True
            return False
        self._brokers_down = False
        self._last_ack = time.monotonic()
        return True

    def healthy(self) -> tuple[bool, dict[str, object]]:
        pending = len(self._producer)
        stalled = pending > 0 and time.monotonic() - self._last_ack > STALLED_AFTER_SECONDS
        ok = not self._brokers_down and not stalled and self._denied is None
        details: dict[str, object] = {
            "kafka_pending": pending,
            "kafka_brokers_down": self._brokers_down,
        }
        if self._denied is not None:
            details["kafka_error"] = self._denied
        return ok, details

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._brokers_down = True
        if err.fatal():
            self._fatal = err  # replaced at the next poll()
        self._note_denied(err)
        kafka_errors.warning(
            "kafka_client_error", error=err.str(), code=err.name(), fatal=err.fatal()
        )
