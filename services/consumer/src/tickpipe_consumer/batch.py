"""Messages → a batch: the rows to store, the messages to dead-letter, the offsets to commit.

Validation happens as messages arrive (with the schema's fast decoder, which hands anything
unusual to the reference decoder for its verdict), so the batch in hand is always split into
rows and rejects; the offsets a batch may commit are computed from all its messages, good and
bad alike, because a rejected message is done once its DLQ copy is delivered.

Nothing is made per message beyond its row: the batch keeps parallel lists (each row next to
the message it came from, for the rare row the database refuses) and, per partition, the
highest offset seen. This runs for every tick, so it is kept to list appends and one dict
update.
"""

from __future__ import annotations

from confluent_kafka import Message, TopicPartition

from tickpipe_common.schema import TickRejected, check_storable, decode_tick_fast
from tickpipe_consumer.rows import Row, producer_from_headers, tick_to_row

PartitionKey = tuple[str, int]


def prepare_row(message: Message, now_ns: int, max_future_ns: int) -> Row:
    """Decode and check one message of the tick topic; ``TickRejected`` says why not."""
    key = message.key()
    value = message.value()
    tick = decode_tick_fast(value)
    check_storable(tick, key, now_ns, max_future_ns)
    producer = producer_from_headers(message.headers())
    return tick_to_row(tick, producer, may_hold_nul=value is None or b"\\u0000" in value)


class Batch:
    """The messages of one batch: ``rows[i]`` came from ``sources[i]``; ``rejected`` holds
    the messages for the DLQ with their reason; ``highest`` the last offset per partition."""

    __slots__ = ("highest", "rejected", "rows", "sources")

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.sources: list[Message] = []
        self.rejected: list[tuple[Message, TickRejected]] = []
        self.highest: dict[PartitionKey, int] = {}

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejected)

    def add(self, message: Message, key: PartitionKey, now_ns: int, max_future_ns: int) -> None:
        """One message of the tick topic (not an error event) from partition ``key``."""
        offset = _int(message.offset())
        if offset > self.highest.get(key, -1):
            self.highest[key] = offset
        try:
            row = prepare_row(message, now_ns, max_future_ns)
        except TickRejected as rejected:
            self.rejected.append((message, rejected))
            return
        self.rows.append(row)
        self.sources.append(message)

    def drop_partitions(self, gone: set[PartitionKey]) -> int:
        """Forget every message of these partitions; returns how many there were."""
        if not gone.intersection(self.highest):
            return 0
        before = len(self)
        kept = [i for i, m in enumerate(self.sources) if (m.topic(), m.partition()) not in gone]
        self.rows = [self.rows[i] for i in kept]
        self.sources = [self.sources[i] for i in kept]
        self.rejected = [r for r in self.rejected if (r[0].topic(), r[0].partition()) not in gone]
        self.highest = {k: o for k, o in self.highest.items() if k not in gone}
        return before - len(self)

    def next_offsets(self) -> list[TopicPartition]:
        """Per partition, the offset to commit: one past the highest offset handled."""
        return [TopicPartition(t, p, offset + 1) for (t, p), offset in sorted(self.highest.items())]


def _int(value: int | None) -> int:
    if value is None:  # pragma: no cover - only error events lack a position
        raise ValueError("a consumed message without a partition or offset")
    return value
