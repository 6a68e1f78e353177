"""Reading a topic back in tests."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 90.0) -> list[Message]:
    """Every message of ``topic`` from the start, waiting until ``expected`` have arrived
    (then one more short poll, so that extra messages are seen too).

    The partitions are assigned, not subscribed: no consumer-group join, whose rebalance took
    a good part of the old 30 s deadline on a loaded machine. The deadline is generous because
    it only bounds a failure; a passing read returns as soon as the messages are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            messages.extend(m for m in batch if m.error() is None)
            if len(messages) >= expected:
                messages.extend(m for m in consumer.consume(1000, timeout=1.0) if m.error() is None)
                break
    finally:
        consumer.close()
    return messages
