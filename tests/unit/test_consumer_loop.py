"""The batch loop against fakes: retries without early commits, rebalances, refused rows,
and the shutdown timeout. The same behaviour runs against real services in
tests/integration/test_consumer_pipeline.py; these pin down the interleavings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from tickpipe_common.schema import RejectReason, Tick, TickRejected, encode_tick, kafka_headers
from tickpipe_consumer.batch import Batch
from tickpipe_consumer.dlq import DlqPublisher
from tickpipe_consumer.loop import ConsumerLoop
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_consumer.rows import Row
from tickpipe_consumer.writer import (
    RowsRejectedError,
    TickWriter,
    TransientDatabaseError,
    WriteResult,
    tally,
)

from .copy_rows import decode_copy_row

TOPIC = "ticks"


def _tick(symbol: str, n: int) -> Tick:
    return Tick.model_validate(
        {
            "kind": "trade",
            "asset_class": "stock",
            "symbol": symbol,
            "ts": time.time_ns() - 1_000_000_000 + n,
            "received_at": time.time_ns(),
            "feed": "test",
            "price": 10.0 + n,
            "size": 1.0,
            "exchange": "V",
            "trade_id": n,
        }
    )


def _message(
    partition: int, offset: int, symbol: str = "AAPL", value: bytes | None = None
) -> Message:
    return Message(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=symbol.encode(),
        value=encode_tick(_tick(symbol, offset)) if value is None else value,
        headers=kafka_headers("test"),
    )


class FakeConsumer:
    def __init__(self, messages: list[Message], stop: threading.Event) -> None:
        self.queue = list(messages)
        self.stop = stop
        self.commits: list[list[tuple[int, int]]] = []
        self.paused: list[int] = []
        self.resumed: list[int] = []
        self.on_poll: Callable[[], None] | None = None
        self.refuse_commits = 0
        self.cached_high = -1
        self.read_up_to: dict[int, int] = {}
        self.broker_high = -1

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if not self.queue:
            self.stop.set()  # the test's input is exhausted: ask for a clean stop
            return []
        taken, self.queue = self.queue[:num_messages], self.queue[num_messages:]
        for m in taken:
            self.read_up_to[cast(int, m.partition())] = cast(int, m.offset()) + 1
        return taken

    def poll(self, timeout: float) -> Message | None:
        if self.on_poll is not None:
            self.on_poll()
        time.sleep(min(timeout, 0.005))
        return None

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.refuse_commits:
            self.refuse_commits -= 1
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])
        return offsets

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.extend(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.extend(tp.partition for tp in partitions)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.read_up_to.get(tp.partition, -1001))
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        # Like librdkafka: the cached watermark is the one the last fetch brought, which stops
        # moving while the partition is paused; asking the broker gives the real one.
        return (0, self.cached_high if cached else self.broker_high)


class FakeWriter:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.stored: dict[tuple[str, int], Row] = {}
        self.transient_failures = 0
        self.refuse_symbol: str | None = None
        self.attempts = 0

    def write(self, rows: Sequence[Row]) -> WriteResult:
        self.attempts += 1
        if self.transient_failures:
            self.transient_failures -= 1
            # The invariant under test: no offset is committed while a batch is not stored.
            assert self.consumer.commits == [], "an offset was committed before its rows"
            raise TransientDatabaseError("OperationalError: connection refused")
        symbols = [decode_copy_row(row.data)["symbol"] for row in rows]
        if self.refuse_symbol and self.refuse_symbol in symbols:
            raise RowsRejectedError("CheckViolation[23514]: refused")
        inserted: list[tuple[object, object]] = []
        for symbol, row in zip(symbols, rows, strict=True):
            key = (str(symbol), row.ts_ns)
            if key not in self.stored:
                self.stored[key] = row
                inserted.append((row.kind, row.ts_ns))
        return WriteResult(tally(inserted), time.time_ns(), 0.001, "fake")

    def ping(self) -> None:
        return None


class FakeDlq:
    def __init__(self) -> None:
        self.letters: list[tuple[int, RejectReason]] = []
        self.topic = "ticks.dlq"
        self.pending = 0

    def publish(self, message: Message, rejected: TickRejected) -> None:
        self.letters.append((cast(int, message.offset()), rejected.reason))

    def flush(self, timeout: float) -> bool:
        return True


def _loop(
    messages: list[Message],
    partitions: tuple[int, ...] = (0, 1),
    shutdown_timeout: float = 5.0,
) -> tuple[ConsumerLoop, FakeConsumer, FakeWriter, FakeDlq, CollectorRegistry]:
    stop = threading.Event()
    consumer = FakeConsumer(messages, stop)
    writer = FakeWriter(consumer)
    dlq = FakeDlq()
    registry = CollectorRegistry()
    loop = ConsumerLoop(
        cast(Consumer, consumer),
        cast(TickWriter, writer),
        cast(DlqPublisher, dlq),
        ConsumerMetrics(registry),
        stop,
        batch_max_messages=1000,
        batch_max_seconds=0.05,
        max_future_seconds=300,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.02,
        shutdown_timeout_seconds=shutdown_timeout,
    )
    loop.on_assign(cast(Consumer, consumer), [TopicPartition(TOPIC, p) for p in partitions])
    return loop, consumer, writer, dlq, registry


def _run(loop: ConsumerLoop, limit: float = 10.0) -> float:
    started = time.monotonic()
    worker = threading.Thread(target=loop.run)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), "the loop did not stop"
    return time.monotonic() - started


def test_batch_is_retried_while_paused_and_committed_only_after_it_is_stored() -> None:
    messages = [_message(0, o) for o in range(5)] + [_message(1, o, "MSFT") for o in range(3)]
    loop, consumer, writer, _, registry = _loop(messages)
    writer.transient_failures = 3
    _run(loop)
    assert len(writer.stored) == 8
    assert consumer.commits == [[(0, 5), (1, 3)]]
    assert sorted(set(consumer.paused)) == [0, 1]
    assert sorted(set(consumer.resumed)) == [0, 1]
    assert registry.get_sample_value("tickpipe_consumer_db_retries_total") == 3
    assert registry.get_sample_value("tickpipe_consumer_db_errors_total") == 3
    assert (
        registry.get_sample_value("tickpipe_consumer_rows_inserted_total", {"kind": "trade"}) == 8
    )


def test_readiness_is_false_while_the_database_fails() -> None:
    loop, consumer, writer, _, registry = _loop([_message(0, 0)])
    writer.transient_failures = 2
    seen: list[bool] = []
    consumer.on_poll = lambda: seen.append(loop.readiness()[0])
    _run(loop)
    assert seen
    assert not any(seen)
    assert loop.readiness()[0] is True
    assert registry.get_sample_value("tickpipe_consumer_ready") == 0  # the loop has stopped


def test_revoked_partition_is_dropped_from_the_batch_in_hand() -> None:
    messages = [_message(0, o) for o in range(4)] + [_message(1, o, "MSFT") for o in range(4)]
    loop, consumer, writer, _, _ = _loop(messages)
    writer.transient_failures = 1

    def revoke_partition_0() -> None:
        consumer.on_poll = None
        loop.on_revoke(cast(Consumer, consumer), [TopicPartition(TOPIC, 0)])

    consumer.on_poll = revoke_partition_0  # the rebalance arrives while the retry waits
    _run(loop)
    # Partition 0 now belongs to someone else, who reads it from its last commit.
    assert {symbol for symbol, _ in writer.stored} == {"MSFT"}
    assert consumer.commits == [[(1, 4)]]


def test_row_refused_by_the_database_is_isolated_and_dead_lettered() -> None:
    messages = [_message(0, o) for o in range(6)]
    messages.insert(3, _message(0, 6, "REFUSED"))
    loop, consumer, writer, dlq, _ = _loop(messages)
    writer.refuse_symbol = "REFUSED"
    _run(loop)
    assert len(writer.stored) == 6
    assert dlq.letters == [(6, RejectReason.INVALID_VALUE)]
    assert consumer.commits == [[(0, 7)]]


def test_poison_messages_go_to_the_dlq_and_their_offsets_are_committed() -> None:
    messages = [
        _message(0, 0),
        _message(0, 1, value=b"not json"),
        _message(0, 2, value=b""),
        _message(0, 3, symbol="MSFT", value=encode_tick(_tick("AAPL", 3))),
        _message(0, 4),
    ]
    loop, consumer, writer, dlq, _ = _loop(messages)
    _run(loop)
    assert len(writer.stored) == 2
    assert dlq.letters == [
        (1, RejectReason.NOT_JSON),
        (2, RejectReason.EMPTY),
        (3, RejectReason.KEY_MISMATCH),
    ]
    assert consumer.commits == [[(0, 5)]]


def test_stop_during_an_outage_gives_up_after_the_shutdown_timeout_without_committing() -> None:
    loop, consumer, writer, _, _ = _loop([_message(0, 0)], shutdown_timeout=0.3)
    writer.transient_failures = 10**6
    elapsed = _run(loop, limit=5.0)
    assert 0.3 <= elapsed < 3.0
    assert writer.stored == {}
    assert consumer.commits == []


def test_a_refused_commit_is_retried_not_forgotten() -> None:
    loop, consumer, writer, _, _ = _loop([_message(0, o) for o in range(5)])
    consumer.refuse_commits = 1  # e.g. REBALANCE_IN_PROGRESS while the group settles
    _run(loop)
    assert len(writer.stored) == 5
    assert consumer.commits == [[(0, 5)]]


def test_batch_rows_rejects_and_next_offsets() -> None:
    now = time.time_ns()
    batch = Batch()
    batch.add(_message(2, 10), (TOPIC, 2), now, 300 * 10**9)
    assert len(batch.rows) == 1
    assert batch.sources[0].offset() == 10
    future = Message(
        topic=TOPIC,
        partition=2,
        offset=11,
        key=b"AAPL",
        value=encode_tick(_tick("AAPL", 86_400 * 10**9)),
    )
    batch.add(future, (TOPIC, 2), now, 300 * 10**9)
    ((message, rejected),) = batch.rejected
    assert message is future
    assert rejected.reason is RejectReason.FUTURE_TIMESTAMP
    batch.add(_message(0, 3), (TOPIC, 0), now, 300 * 10**9)
    assert len(batch) == 3
    offsets = batch.next_offsets()
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 4), (2, 12)]
    # A revoked partition takes its rows, rejects and offset with it.
    assert batch.drop_partitions({(TOPIC, 2)}) == 2
    assert (len(batch.rows), batch.rejected, batch.sources[0].partition()) == (1, [], 0)
    assert [(tp.partition, tp.offset) for tp in batch.next_offsets()] == [(0, 4)]


@pytest.mark.parametrize("partitions", [(), (0,)])
def test_ready_once_assigned_even_to_nothing(partitions: tuple[int, ...]) -> None:
    loop, *_ = _loop([], partitions=partitions)
    assert loop.readiness()[0] is True  # joined: even an empty assignment counts


def test_not_ready_before_joining() -> None:
    stop = threading.Event()
    consumer = FakeConsumer([], stop)
    loop = ConsumerLoop(
        cast(Consumer, consumer),
        cast(TickWriter, FakeWriter(consumer)),
        cast(DlqPublisher, FakeDlq()),
        ConsumerMetrics(CollectorRegistry()),
        stop,
        batch_max_messages=10,
        batch_max_seconds=0.1,
        max_future_seconds=300,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.02,
        shutdown_timeout_seconds=1,
    )
    ready, details = loop.readiness()
    assert ready is False
    assert details["kafka_joined"] is False


def test_lag_keeps_growing_while_paused_for_a_database_outage() -> None:
    messages = [_message(0, o) for o in range(4)]
    loop, consumer, writer, _, registry = _loop(messages, partitions=(0,))
    loop._housekeeping_seconds = loop._next_lag_update = 0.0  # update the gauge at every chance
    writer.transient_failures = 10**6  # the database stays down
    consumer.cached_high = 4  # frozen: no fetch while paused
    seen: list[float | None] = []

    def producers_keep_writing() -> None:
        consumer.broker_high += 10 if consumer.broker_high >= 0 else 11
        seen.append(registry.get_sample_value("tickpipe_consumer_lag_messages", {"partition": "0"}))
        if len(seen) > 20:
            writer.transient_failures = 0  # the database is back

    consumer.on_poll = producers_keep_writing
    _run(loop)
    lags = [v for v in seen if v is not None]
    assert len(lags) >= 3
    # Growing with the broker's watermark, not stuck at the cached 4.
    assert lags[-1] > lags[0] > 4
    assert lags == sorted(lags)
