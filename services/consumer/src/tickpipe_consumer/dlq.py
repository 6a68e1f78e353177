"""The dead-letter topic: messages that cannot be stored, kept with the reason why.

A DLQ message is the original key and value, byte for byte, with the original headers plus
``tickpipe-dlq-*`` headers saying why it was rejected and where it came from, so it can be
inspected and, once the cause is fixed, re-published to the tick topic.

The consumer commits a message's offset only after its DLQ copy is acknowledged by the broker
(``flush`` returns True), so a rejected message is never lost either.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tickpipe_common.kafka_produce import produce_with_room
from tickpipe_common.logging import get_logger
from tickpipe_common.schema import TickRejected
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_consumer.rows import Headers, header_pairs

log = get_logger(__name__)

HEADER_REASON = "tickpipe-dlq-reason"
HEADER_DETAIL = "tickpipe-dlq-detail"
HEADER_SOURCE_TOPIC = "tickpipe-dlq-source-topic"
HEADER_SOURCE_PARTITION = "tickpipe-dlq-source-partition"
HEADER_SOURCE_OFFSET = "tickpipe-dlq-source-offset"
_DLQ_PREFIX = "tickpipe-dlq-"
_MAX_DETAIL_BYTES = 1024

# The type confluent-kafka accepts for headers (what we build is always bytes or None).
HeaderList = list[tuple[str, str | bytes | None]]


def dlq_headers(
    original: Headers | None,
    rejected: TickRejected,
    topic: str,
    partition: int,
    offset: int,
) -> HeaderList:
    """Our headers first, then the original ones (minus an earlier DLQ trip's headers)."""
    detail = rejected.detail.encode("utf-8", "replace")
    if len(detail) > _MAX_DETAIL_BYTES:
        # Bounded: the detail may quote the message, and headers count against the size limit.
        detail = detail[: _MAX_DETAIL_BYTES - 3] + b"..."
    headers: HeaderList = [
        (HEADER_REASON, rejected.reason.value.encode()),
        (HEADER_DETAIL, detail),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
    ]
    for name, value in header_pairs(original):
        # A message re-driven from the DLQ that fails again gets fresh reasons, not two sets.
        if name.startswith(_DLQ_PREFIX):
            continue
        headers.append((name, value.encode() if isinstance(value, str) else value))
    return headers


@dataclass(frozen=True)
class _Letter:
    key: bytes | None
    value: bytes | None
    headers: HeaderList
    reason: str


class DlqPublisher:
    """Sends rejected messages and knows whether all of them have been acknowledged."""

    def __init__(self, producer: Producer, topic: str, metrics: ConsumerMetrics) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._in_flight = 0
        self._failed: list[_Letter] = []

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def pending(self) -> int:
        """Letters not yet acknowledged by the broker (in flight or waiting to be re-sent)."""
        return self._in_flight + len(self._failed)

    def publish(self, message: Message, rejected: TickRejected) -> None:
        headers = dlq_headers(
            message.headers(),
            rejected,
            message.topic() or "",
            message.partition() or 0,
            message.offset() or 0,
        )
        self._send(_Letter(message.key(), message.value(), headers, rejected.reason.value))

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for acknowledgements; True when every letter is delivered.

        Letters whose delivery failed (after librdkafka's own retries) are sent again here,
        so calling ``flush`` until it returns True delivers everything or keeps trying.
        """
        retry, self._failed = self._failed, []
        for letter in retry:
            self._send(letter)
        self._producer.flush(timeout)
        return self.pending == 0

    def _send(self, letter: _Letter) -> None:
        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._in_flight -= 1
            if err is None:
                self._metrics.dlq_messages.labels(reason=letter.reason).inc()
                return
            log.warning("dlq_delivery_failed", topic=self._topic, error=str(err))
            self._failed.append(letter)

        try:
            sent = produce_with_room(
                self._producer,
                self._topic,
                letter.value,
                letter.key,
                letter.headers,
                delivered,
                attempts=100,
                wait_seconds=0.1,
            )
        except KafkaException as exc:
            log.warning("dlq_produce_failed", topic=self._topic, error=str(exc))
            sent = False
        if not sent:
            self._failed.append(letter)
            return
        self._in_flight += 1
