"""The consumer against a real broker and PostgreSQL: exactly-once storage, the DLQ, a
database outage, and SIGTERM. The loop runs in-process (a thread and a stop event) where it
can, so each test costs about one group join; the SIGTERM test runs the real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from prometheus_client import CollectorRegistry
from psycopg import sql

from tickpipe_common.schema import Tick, encode_tick, kafka_headers
from tickpipe_consumer.__main__ import ConsumerService
from tickpipe_consumer.settings import ConsumerSettings

Headers = list[tuple[str, str | bytes | None]]
Record = tuple[bytes | None, bytes | None, Headers]  # key, value, headers

SYMBOLS = ("AAPL", "MSFT", "BTC/USD", "ETH/USD")
# Exchange times start an hour back (well inside MAX_FUTURE_SECONDS either way), fixed for the
# session so the same n always means the same tick.
BASE_NS = time.time_ns() // 1_000_000_000 * 1_000_000_000 - 3_600_000_000_000


def _tick(n: int, received_ns: int | None = None) -> Tick:
    """The n-th distinct trade of the test (same n → same tick identity)."""
    symbol = SYMBOLS[n % len(SYMBOLS)]
    ts_ns = BASE_NS + n * 1_000_001
    return Tick.model_validate(
        {
            "kind": "trade",
            "asset_class": "crypto" if "/" in symbol else "stock",
            "symbol": symbol,
            "ts": ts_ns,
            "received_at": received_ns or time.time_ns(),
            "feed": "test",
            "price": 100.0 + n / 100,
            "size": 1.5,
            "exchange": "V",
            "trade_id": n,
        }
    )


def _record(tick: Tick) -> Record:
    return (tick.symbol.encode(), encode_tick(tick), kafka_headers("producer-test"))


def _produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, value=value, key=key, headers=headers)
    assert producer.flush(30) == 0


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _count(dsn: str, query: str = "SELECT count(*) FROM market_ticks") -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        try:
            row = conn.execute(query.encode()).fetchone()
        except psycopg.errors.UndefinedTable:  # the consumer has not migrated yet
            return 0
    return int(row[0]) if row else 0


def _offsets(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    """(sum of committed offsets of ``group``, sum of end offsets) over the topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in committed), sum(ends)


def _settings(bootstrap: str, topic: str, dsn: str, **overrides: Any) -> ConsumerSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "kafka_topic": topic,
        "kafka_group_id": f"test-consumer-{uuid.uuid4().hex[:8]}",
        "database_url": dsn,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "batch_max_messages": 100,
        "batch_max_seconds": 0.1,
        "db_retry_initial_seconds": 0.1,
        "db_retry_max_seconds": 0.5,
        "db_connect_timeout_seconds": 2,
        "shutdown_timeout_seconds": 5,
    }
    values.update(overrides)
    return ConsumerSettings(**values)


class RunningConsumer:
    """``ConsumerService`` in a thread, with its own metrics registry."""

    def __init__(self, settings: ConsumerSettings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.service = ConsumerService(settings, self.registry)
        self.stop_event = threading.Event()
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="consumer-under-test")

    def _run(self) -> None:
        self.exit_code = self.service.run(self.stop_event)

    def start(self) -> RunningConsumer:
        self._thread.start()
        return self

    def __enter__(self) -> RunningConsumer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> float:
        started = time.monotonic()
        self.stop_event.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the consumer did not stop"
        assert self.exit_code == 0
        return time.monotonic() - started

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.service.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()


def _dlq_messages(bootstrap: str, topic: str, expected: int) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    found: list[Message] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < expected and time.monotonic() < deadline:
            found.extend(m for m in consumer.consume(100, 0.5) if m.error() is None)
        found.extend(m for m in consumer.consume(100, 1.0) if m.error() is None)  # any extra
    finally:
        consumer.close()
    return found


# -- (2) exactly once -----------------------------------------------------------------------


def test_every_tick_is_stored_exactly_once_and_offsets_follow(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str
) -> None:
    n = 400
    ticks = [_tick(i) for i in range(n)]
    records = [_record(t) for t in ticks]
    records.insert(200, _record(ticks[10]))  # the same message twice in the stream
    produced_at = time.time()
    _produce(kafka_bootstrap, fresh_topic, records)
    settings = _settings(kafka_bootstrap, fresh_topic, fresh_database)
    group = settings.kafka_group_id

    with RunningConsumer(settings) as consumer:
        _wait_until(lambda: _count(fresh_database) >= n, 60, f"{n} rows")
        _wait_until(
            lambda: _offsets(kafka_bootstrap, group, fresh_topic) == (n + 1, n + 1),
            30,
            "all offsets committed",
        )
        status, body = consumer.get("/readyz")
        assert status == 200, body
        assert json.loads(body)["ready"] is True
        status, text = consumer.get("/metrics")
        assert b"tickpipe_consumer_rows_inserted_total" in text
        assert consumer.metric("tickpipe_consumer_ready") == 1
    assert _count(fresh_database) == n
    assert _count(fresh_database, "SELECT count(DISTINCT tick_id) FROM market_ticks") == n
    assert consumer.metric("tickpipe_consumer_messages_consumed_total") == n + 1
    inserted = consumer.metric("tickpipe_consumer_rows_inserted_total", {"kind": "trade"})
    assert inserted == n
    assert consumer.metric("tickpipe_consumer_duplicates_skipped_total") == 1
    assert consumer.metric("tickpipe_consumer_batch_size_count") >= n / 100
    # Latency is observed for what was inserted: n rows, each about an hour old (BASE_NS),
    # committed between the moment they were produced and now.
    assert consumer.metric("tickpipe_consumer_end_to_end_latency_seconds_count") == n
    latency_sum = consumer.metric("tickpipe_consumer_end_to_end_latency_seconds_sum")
    exchange_sum = sum(t.ts_ns for t in ticks) / 1e9
    assert n * produced_at - exchange_sum <= latency_sum <= n * time.time() - exchange_sum

    # A replay of a batch (as the producers' `replay` command does: same ticks, later
    # received_at), read by a new consumer in the same group: it sees only the replay,
    # because the first run's offsets were committed, and stores none of it again.
    replay = [_record(_tick(i, received_ns=time.time_ns())) for i in range(100, 150)]
    _produce(kafka_bootstrap, fresh_topic, replay)
    with RunningConsumer(settings) as second:
        _wait_until(
            lambda: _offsets(kafka_bootstrap, group, fresh_topic) == (n + 51, n + 51),
            60,
            "the replay's offsets committed",
        )
    assert second.metric("tickpipe_consumer_messages_consumed_total") == 50
    assert second.metric("tickpipe_consumer_duplicates_skipped_total") == 50
    assert second.metric("tickpipe_consumer_rows_inserted_total", {"kind": "trade"}) == 0
    assert _count(fresh_database) == n
    # Exact values survive the trip: ts_ns is the producer's nanosecond timestamp.
    sample = ticks[123]
    stored = _count(
        fresh_database,
        f"SELECT ts_ns FROM market_ticks WHERE tick_id = '{sample.tick_id}'",  # noqa: S608 - a uuid
    )
    assert stored == sample.ts_ns


# -- (3) poison messages ----------------------------------------------------------------------


def test_poison_messages_go_to_the_dlq_with_their_reason(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str
) -> None:
    good = [_tick(i) for i in range(8)]
    valid = json.loads(encode_tick(good[0]))

    def variant(**changes: object) -> bytes:
        return json.dumps({**valid, **changes}).encode()

    future_ns = time.time_ns() + 86_400 * 1_000_000_000
    poison: list[tuple[str, Record]] = [
        ("not_json", (b"AAPL", b"{this is not json", [])),
        ("unsupported_schema_version", (b"AAPL", variant(schema_version=4), [])),
        # Raw JSON NaN: Python's json module writes it, strict JSON parsers refuse it.
        ("invalid_value", (b"AAPL", variant(price=float("nan")), [("x-case", b"nan")])),
        ("invalid_value", (b"AAPL", variant(price=-1.0), [("x-case", b"negative")])),
        ("future_timestamp", (b"AAPL", encode_tick(_tick_at(good[0], future_ns)), [])),
        ("key_mismatch", (b"MSFT", encode_tick(good[0]), [])),
        ("empty", (b"AAPL", b"", [])),
    ]
    assert b"NaN" in (poison[2][1][1] or b"")
    records: list[Record] = []
    for i, tick in enumerate(good):
        records.append(_record(tick))
        if i < len(poison):
            records.append(poison[i][1])
    _produce(kafka_bootstrap, fresh_topic, records)
    settings = _settings(kafka_bootstrap, fresh_topic, fresh_database)

    with RunningConsumer(settings) as consumer:
        _wait_until(
            lambda: (
                _offsets(kafka_bootstrap, settings.kafka_group_id, fresh_topic)
                == (len(records), len(records))
            ),
            60,
            "all offsets committed",
        )
    assert _count(fresh_database) == len(good)
    letters = _dlq_messages(kafka_bootstrap, settings.dlq_topic, len(poison))
    assert len(letters) == len(poison)
    by_value = {m.value(): m for m in letters}
    for reason, (key, value, headers) in poison:
        letter = by_value[value or b""] if value else next(m for m in letters if not m.value())
        got = dict(letter.headers() or [])
        assert got["tickpipe-dlq-reason"] == reason.encode(), (reason, got)
        assert got["tickpipe-dlq-detail"]
        assert got["tickpipe-dlq-source-topic"] == fresh_topic.encode()
        assert int(got["tickpipe-dlq-source-offset"] or b"-1") >= 0
        assert "tickpipe-dlq-source-partition" in got
        assert letter.key() == key
        for name, original in headers:
            assert got[name] == original
    for reason in {r for r, _ in poison}:
        expected = sum(1 for r, _ in poison if r == reason)
        counted = consumer.metric("tickpipe_consumer_dlq_messages_total", {"reason": reason})
        assert counted == expected, reason


def _tick_at(tick: Tick, ts_ns: int) -> Tick:
    return tick.model_copy(update={"ts_ns": ts_ns})


# -- (4) database outage ----------------------------------------------------------------------


def _set_connections(admin_dsn: str, dsn: str, allowed: bool) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    assert isinstance(name, str)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


@pytest.fixture
def outage(pg_admin_dsn: str, fresh_database: str) -> Iterator[Callable[[bool], None]]:
    def switch(down: bool) -> None:
        _set_connections(pg_admin_dsn, fresh_database, allowed=not down)

    yield switch
    switch(False)


def test_database_outage_pauses_retries_and_loses_nothing(
    kafka_bootstrap: str,
    fresh_topic: str,
    fresh_database: str,
    outage: Callable[[bool], None],
) -> None:
    first = [_record(_tick(i)) for i in range(100)]
    second = [_record(_tick(i)) for i in range(100, 250)]
    settings = _settings(kafka_bootstrap, fresh_topic, fresh_database)
    group = settings.kafka_group_id
    with RunningConsumer(settings) as consumer:
        _produce(kafka_bootstrap, fresh_topic, first)
        _wait_until(lambda: _offsets(kafka_bootstrap, group, fresh_topic)[0] == 100, 60, "first")
        assert _count(fresh_database) == 100

        outage(True)
        _produce(kafka_bootstrap, fresh_topic, second)
        _wait_until(
            lambda: consumer.metric("tickpipe_consumer_db_retries_total") >= 3, 30, "retries"
        )
        status, body = consumer.get("/readyz")
        assert status == 503, body
        assert json.loads(body)["database"] == "unreachable"
        assert json.loads(body)["paused"] is True
        assert consumer.metric("tickpipe_consumer_ready") == 0
        # Nothing is committed while the rows are not stored.
        for _ in range(3):
            assert _offsets(kafka_bootstrap, group, fresh_topic) == (100, 250)
            time.sleep(0.3)

        outage(False)
        _wait_until(
            lambda: _offsets(kafka_bootstrap, group, fresh_topic) == (250, 250), 60, "recovery"
        )
        assert _count(fresh_database) == 250
        _wait_until(lambda: consumer.get("/readyz")[0] == 200, 10, "ready again")
    assert consumer.metric("tickpipe_consumer_db_errors_total") >= 3
    assert consumer.metric("tickpipe_consumer_rows_inserted_total", {"kind": "trade"}) == 250
    assert _count(fresh_database, "SELECT count(DISTINCT tick_id) FROM market_ticks") == 250


# -- rebalances -------------------------------------------------------------------------------


class _Feeder:
    """Produces distinct ticks in a background thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, start: int = 0) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._topic = topic
        self.produced = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder")

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(20):
                key, value, headers = _record(_tick(self.produced))
                self._producer.produce(self._topic, value=value, key=key, headers=headers)
                self.produced += 1
            self._producer.poll(0)
            time.sleep(0.02)

    def __enter__(self) -> _Feeder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> int:
        """Stop producing; returns how many ticks were produced in all."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(30)
            assert self._producer.flush(30) == 0
        return self.produced


def test_partitions_moving_between_consumers_lose_nothing(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str
) -> None:
    settings = _settings(kafka_bootstrap, fresh_topic, fresh_database, batch_max_seconds=0.3)
    group = settings.kafka_group_id

    def partitions(consumer: RunningConsumer) -> int:
        return int(json.loads(consumer.get("/readyz")[1]).get("partitions", 0))

    with _Feeder(kafka_bootstrap, fresh_topic) as feeder:
        first = RunningConsumer(settings).start()
        try:
            _wait_until(lambda: _count(fresh_database) > 0, 60, "the first consumer's rows")
            # A second member joins mid-stream: partitions move while batches are in hand.
            with RunningConsumer(settings) as second:
                _wait_until(lambda: partitions(second) > 0, 30, "the second consumer's share")
                assert partitions(first) + partitions(second) == 3
                time.sleep(0.5)
                # ... and the first leaves mid-stream: everything moves to the second.
                first.stop()
                _wait_until(lambda: partitions(second) == 3, 30, "the second takes over")
                time.sleep(0.5)
                total = feeder.stop()
                _wait_until(
                    lambda: _offsets(kafka_bootstrap, group, fresh_topic) == (total, total),
                    60,
                    "all offsets committed",
                )
        finally:
            if first.exit_code is None:  # a failure above left it running
                first.stop()
    assert _count(fresh_database) == total
    assert _count(fresh_database, "SELECT count(DISTINCT tick_id) FROM market_ticks") == total


# -- (5) SIGTERM ------------------------------------------------------------------------------


def test_sigterm_stores_and_commits_the_batch_in_hand_then_exits_0(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str, tmp_path: Path
) -> None:
    group = f"test-consumer-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC": fresh_topic,
        "KAFKA_GROUP_ID": group,
        "DATABASE_URL": fresh_database,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        "LOG_FORMAT": "json",
        "BATCH_MAX_MESSAGES": "5000",
        "BATCH_MAX_SECONDS": "2",  # long batches: SIGTERM lands with one in hand
    }
    log_path = tmp_path / "consumer.log"
    stop_producing = threading.Event()
    produced = [0]

    def keep_producing() -> None:
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        n = 0
        while not stop_producing.is_set():
            for _ in range(20):
                key, value, headers = _record(_tick(n))
                producer.produce(fresh_topic, value=value, key=key, headers=headers)
                n += 1
            producer.poll(0)
            time.sleep(0.02)
        producer.flush(30)
        produced[0] = n

    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tickpipe_consumer"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        feeder = threading.Thread(target=keep_producing)
        feeder.start()
        try:
            _wait_until(lambda: _count(fresh_database) > 0, 60, "the first stored batch")
            time.sleep(0.7)  # into the next (2 s) batch
            rows_at_signal = _count(fresh_database)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            exit_code = process.wait(timeout=15)
            took = time.monotonic() - sent
        finally:
            stop_producing.set()
            feeder.join(30)
            if process.poll() is None:
                process.kill()
                process.wait()
    log = log_path.read_text()
    assert exit_code == 0, log
    assert took < 5, f"took {took:.1f}s to stop\n{log}"
    events = [json.loads(line).get("event") for line in log.splitlines() if line.startswith("{")]
    assert "shutdown_requested" in events
    assert "consumer_stopped" in events
    assert "batch_abandoned" not in events
    committed, end = _offsets(kafka_bootstrap, group, fresh_topic)
    rows = _count(fresh_database)
    # Every stored row is committed and every committed offset is stored, and the batch in
    # hand at SIGTERM was finished rather than dropped: rows arrived after the signal.
    assert rows == committed
    assert rows > rows_at_signal
    assert 0 < committed <= end == produced[0]
