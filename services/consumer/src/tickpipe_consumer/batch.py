"""Messages → batch entries: each one either a row to store or a reason to dead-letter it.

Validation happens as messages arrive (with the schema's fast decoder, which hands anything
unusual to the reference decoder for its verdict), so the batch in hand is always split into
rows and rejects; the offsets a batch may commit are computed from its entries, good and bad alike,
because a rejected message is done once its DLQ copy is delivered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition

from tickpipe_common.schema import TickRejected, check_storable, decode_tick_fast
from tickpipe_consumer.rows import Row, producer_from_headers, tick_to_row

PartitionKey = tuple[str, int]


@dataclass(slots=True)
class Entry:
    """One consumed message and what to do with it (``row`` xor ``rejected``)."""

    message: Message
    topic: str
    partition: int
    offset: int
    row: Row | None = None
    rejected: TickRejected | None = None

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)

    def reject(self, rejected: TickRejected) -> None:
        self.row = None
        self.rejected = rejected


def prepare(message: Message, now_ns: int, max_future_ns: int) -> Entry:
    """Decode and check one message from the tick topic (not an error event)."""
    entry = Entry(
        message=message,
        topic=message.topic() or "",
        partition=_int(message.partition()),
        offset=_int(message.offset()),
    )
    key = message.key()
    value = message.value()
    try:
        tick = decode_tick_fast(value)
        check_storable(tick, key, now_ns, max_future_ns)
        producer = producer_from_headers(message.headers())
        entry.row = tick_to_row(tick, producer, may_hold_nul=value is None or b"\\u0000" in value)
    except TickRejected as rejected:
        entry.rejected = rejected
    return entry


def next_offsets(entries: Iterable[Entry]) -> list[TopicPartition]:
    """Per partition, the offset to commit: one past the highest offset handled."""
    highest: dict[PartitionKey, int] = {}
    for entry in entries:
        if entry.offset > highest.get(entry.key, -1):
            highest[entry.key] = entry.offset
    return [TopicPartition(t, p, offset + 1) for (t, p), offset in sorted(highest.items())]


def _int(value: int | None) -> int:
    if value is None:  # pragma: no cover - only error events lack a position
        raise ValueError("a consumed message without a partition or offset")
    return value
