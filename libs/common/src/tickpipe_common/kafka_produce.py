"""One rule for a full local Kafka queue, shared by the producers, replay and the consumer's DLQ.

``Producer.produce`` raises ``BufferError`` when the client's queue is full. The only way to
make room is to serve delivery reports (``poll``), so: poll, retry, and give up after a bounded
number of attempts, telling the caller, who decides where the message waits instead (the
producer's backup, the DLQ's retry list). ``KafkaException`` is the caller's to handle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer


def produce_with_room(
    producer: Producer,
    topic: str,
    value: Any,
    key: Any,
    headers: Any,
    on_delivery: Callable[..., None],
    *,
    attempts: int | None,
    wait_seconds: float,
) -> bool:
    """``produce`` once the queue has room; False after ``attempts`` tries (``None``: no limit)
    found it full, each try but the last followed by ``poll(wait_seconds)``."""
    attempt = 0
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return True
        except BufferError:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                return False
            producer.poll(wait_seconds)
