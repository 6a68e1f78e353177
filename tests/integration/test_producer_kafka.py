"""The producer runtime against a real broker: publishing, headers, replay, Kafka outages,
and spilling to the backup when the client's queue is full, then re-publishing from it."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from msgpack import Timestamp
from prometheus_client import CollectorRegistry

from tests.kafka_helpers import read_topic
from tests.unit.ticks import TS, back_up, bar, trade
from tickpipe_common.kafka_config import producer_config
from tickpipe_common.logging import configure_logging
from tickpipe_common.producer.csv_backup import CsvBackupWriter, read_backup
from tickpipe_common.producer.handoff import HandOff
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.replay import replay_backup
from tickpipe_common.producer.sink import TickSink
from tickpipe_common.schema import AssetClass, Tick, decode_tick, encode_tick
from tickpipe_common.settings import KafkaSettings
from tickpipe_producer_stocks.settings import StockProducerSettings

DAY = 86_400 * 10**9


def _publisher(
    bootstrap: str, topic: str, queue_max_mib: int = 64, **conf_overrides: object
) -> tuple[KafkaPublisher, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap)
    conf = producer_config(settings, "producer-stocks", queue_max_mib=queue_max_mib)
    conf.update(conf_overrides)
    return KafkaPublisher(conf, topic, "producer-stocks", "stock", metrics), registry


def _produce(publisher: KafkaPublisher, tick: Tick) -> bool:
    return publisher.produce(tick.symbol.encode(), encode_tick(tick), tick.kind.value)


def _sink(publisher: KafkaPublisher, backup: CsvBackupWriter) -> TickSink:
    return TickSink(
        HandOff(1000),
        "stock",
        "iex",
        PriceChangeFilter(every_tick=True),
        backup,
        publisher,
        publisher.metrics,
    )


def _backup_ok(sink: TickSink) -> bool:
    return sink.backup_ok


def _spilling(sink: TickSink) -> bool:
    return sink.spill is not None


def _raw_trade(i: int, symbol: str = "AAPL") -> dict[str, Any]:
    return {
        "T": "t",
        "S": symbol,
        "i": i,
        "x": "V",
        "p": 1.0 + i / 100,
        "s": 1,
        "t": Timestamp.from_unix_nano(TS + i),
    }


def test_published_ticks_arrive_keyed_with_headers(kafka_bootstrap: str, fresh_topic: str) -> None:
    publisher, registry = _publisher(kafka_bootstrap, fresh_topic)
    ticks = [trade(trade_id=i, symbol=("AAPL", "MSFT")[i % 2]) for i in range(50)] + [bar()]
    for tick in ticks:
        assert _produce(publisher, tick)
    assert publisher.flush(30) == 0
    assert publisher.delivered == len(ticks)
    labels = {"kind": "trade", "asset_class": "stock"}
    assert registry.get_sample_value("tickpipe_producer_ticks_published_total", labels) == 50

    messages = read_topic(kafka_bootstrap, fresh_topic, expected=len(ticks))
    assert len(messages) == len(ticks)
    decoded = [decode_tick(m.value()) for m in messages]
    assert sorted(t.tick_id for t in decoded) == sorted(t.tick_id for t in ticks)
    for message, tick in zip(messages, decoded, strict=True):
        assert message.key() == tick.symbol.encode()
        headers = dict(message.headers() or [])
        assert headers["tickpipe-producer"] == b"producer-stocks"
        assert headers["tickpipe-schema-version"] == b"1"
    # One symbol, one partition: each symbol's trades keep their order.
    for symbol in ("AAPL", "MSFT"):
        ids = [t.trade_id or 0 for t in decoded if t.symbol == symbol]
        assert ids == sorted(ids)
        assert len({m.partition() for m in messages if m.key() == symbol.encode()}) == 1


def test_replay_republishes_exactly_the_range(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    for day in range(3):
        for i in range(10):
            back_up(writer, trade(ts_ns=TS + day * DAY + i, trade_id=day * 100 + i))
    writer.close()
    monkeypatch.setenv("ALPACA_DATA_STREAM_URL", "ws://127.0.0.1:1")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_TOPIC", fresh_topic)
    settings = StockProducerSettings()
    result = replay_backup(
        settings, "producer-stocks", AssetClass.STOCK, TS + DAY, TS + 2 * DAY, None, tmp_path
    )
    assert (result.read, result.delivered, result.failed) == (10, 10, 0)
    again = replay_backup(
        settings, "producer-stocks", AssetClass.STOCK, TS + DAY, TS + 2 * DAY, None, tmp_path
    )
    assert again.delivered == 10
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=20)
    ids = [decode_tick(m.value()).trade_id or 0 for m in messages]
    assert sorted(ids) == sorted(list(range(100, 110)) * 2)


def test_kafka_down_keeps_the_backup_and_reports_not_ready(tmp_path: Path) -> None:
    # A real client against a port where no broker listens.
    publisher, registry = _publisher("127.0.0.1:9", "market_ticks")
    assert not publisher.check_connection(timeout=2)
    backup = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    sink = _sink(publisher, backup)
    bad = {
        "T": "t",
        "S": "AAPL",
        "t": Timestamp.from_unix_nano(TS),
    }  # no price: counted, and the rest of the frame goes on
    sink.handle([(TS, [_raw_trade(0), bad, _raw_trade(1), cast(Any, 5), _raw_trade(2)])])
    sink.handle([(TS, [_raw_trade(i) for i in range(3, 5)])])
    backup.close()
    ok, details = publisher.healthy()
    assert not ok
    assert details["kafka_brokers_down"] is True
    assert backup.rows_written == 5
    assert registry.get_sample_value("tickpipe_producer_malformed_messages_total") == 1
    # the 5 is not even a mapping: an unexpected error, counted, and the frame goes on
    assert registry.get_sample_value("tickpipe_producer_message_errors_total") == 1
    assert publisher.delivered == 0
    publisher.flush(0.1)


def test_replacing_the_client_hands_over_every_queued_tick(
    kafka_bootstrap: str, fresh_topic: str
) -> None:
    """What happens after a fatal (idempotence) error: the client is replaced, and the ticks
    it still held are purged from it and re-published through the new one — none lost."""
    registry = CollectorRegistry()
    conf = producer_config(KafkaSettings(kafka_bootstrap_servers=kafka_bootstrap), "replace-test")
    conf["linger.ms"] = 60_000  # keep everything queued in the first client
    publisher = KafkaPublisher(
        conf, fresh_topic, "producer-stocks", "stock", ProducerMetrics(registry)
    )
    ticks = [trade(trade_id=i) for i in range(100)]
    for tick in ticks:
        assert _produce(publisher, tick)
    assert publisher.delivered == 0
    publisher._replace_producer()
    assert publisher.requeued == 100
    assert publisher.flush(90) == 0
    assert (publisher.delivered, publisher.failed) == (100, 0)
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=100)
    ids = [decode_tick(m.value()).trade_id or 0 for m in messages]
    assert ids == list(range(100))  # all of them, once, in order (one symbol, one partition)


def test_a_full_queue_spills_to_the_backup_and_republishes_it_in_order(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """The client's queue (1 MiB here) cannot take the burst while nothing is sent (a long
    linger stands in for an unreachable broker): the sink goes on writing the backup, and
    once Kafka takes messages again it re-publishes from the backup by itself — every tick
    once, each symbol in order, no manual replay."""
    publisher, registry = _publisher(
        kafka_bootstrap, fresh_topic, queue_max_mib=1, **{"linger.ms": 60_000}
    )
    backup = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    sink = _sink(publisher, backup)
    symbols = ("AAPL", "MSFT", "NVDA")
    total = 12_000  # ~330 bytes each: about four times what the queue holds
    for start in range(0, total, 200):
        frame: list[Mapping[str, Any]] = [
            _raw_trade(i, symbols[i % 3]) for i in range(start, start + 200)
        ]
        sink.handle([(TS + start, frame)])
        sink.service()
    assert _spilling(sink), "the queue never filled"
    assert registry.get_sample_value("tickpipe_producer_spilling") == 1
    assert backup.rows_written == total
    for _ in range(200):  # Kafka takes messages again: flush sends, service re-publishes
        publisher.flush(10)
        sink.service()
        if not _spilling(sink):
            break
    assert not _spilling(sink), "never caught up with the backup"
    assert publisher.flush(30) == 0
    assert registry.get_sample_value("tickpipe_producer_spilling") == 0
    republished = registry.get_sample_value("tickpipe_producer_republished_total") or 0
    assert 0 < republished < total
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=total)
    decoded = [decode_tick(m.value()) for m in messages]
    assert len(decoded) == total
    for symbol in symbols:
        ids = [t.trade_id for t in decoded if t.symbol == symbol]
        assert ids == list(range(symbols.index(symbol), total, 3)), symbol
    backed_up = list(read_backup(tmp_path, AssetClass.STOCK, 0, TS + DAY))
    assert sorted(t.tick_id for t in backed_up) == sorted(t.tick_id for t in decoded)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_backup_disk_never_stops_publishing_and_is_reported(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """The measured fault: with the backup disk full the producer logged one error per tick
    and stayed ready. Now: publishing goes on, the state is a metric (and /readyz), the log
    line is rate-limited, and the next write after space returns clears it."""
    publisher, registry = _publisher(kafka_bootstrap, fresh_topic)
    backup = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    sink = _sink(publisher, backup)
    sink.handle([(TS, [_raw_trade(0)])])  # opens today's file
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    real, backup._fd = backup._fd, full
    for start in range(1, 101, 10):
        sink.handle([(TS, [_raw_trade(i) for i in range(start, start + 10)])])
    assert not _backup_ok(sink)
    assert registry.get_sample_value("tickpipe_producer_backup_ok") == 0
    assert registry.get_sample_value("tickpipe_producer_backup_errors_total") == 100
    backup._fd = real  # space is back
    os.close(full)
    sink.handle([(TS, [_raw_trade(101)])])
    assert _backup_ok(sink)
    assert registry.get_sample_value("tickpipe_producer_backup_ok") == 1
    assert publisher.flush(30) == 0
    assert publisher.delivered == 102  # every tick published, backed up or not
    backup.close()
    assert [t.trade_id for t in read_backup(tmp_path, AssetClass.STOCK, 0, TS + DAY)] == [0, 101]


def test_repeating_log_lines_are_rate_limited() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("producer-stocks", "INFO", "json", stream)
        log = logging.getLogger("tickpipe_common.producer.sink")
        for _ in range(500):
            log.error("backup_write_failed")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:  # give pytest its handlers back
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert [line["event"] for line in lines] == ["backup_write_failed"]


def test_a_restart_while_spilling_resumes_the_republishing(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """The spill cursor outlives the process: a producer stopped while it spills (its queue
    flushed on SIGTERM) and started again re-publishes the rest from the backup by itself."""
    first, _ = _publisher(kafka_bootstrap, fresh_topic, queue_max_mib=1, **{"linger.ms": 60_000})
    backup = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    sink = _sink(first, backup)
    total = 12_000
    for start in range(0, total, 200):
        sink.handle([(TS + start, [_raw_trade(i) for i in range(start, start + 200)])])
    assert _spilling(sink)
    assert first.flush(30) == 0  # SIGTERM: what the client holds is delivered,
    sink.stopped(0)  # and the producer records it (else the restart re-sends it: harmless)
    backup.close()

    second, _ = _publisher(kafka_bootstrap, fresh_topic)
    backup = CsvBackupWriter(tmp_path, AssetClass.STOCK)
    resumed = _sink(second, backup)
    assert _spilling(resumed), "the restart forgot the spill"
    for _ in range(200):
        resumed.service()
        second.flush(10)
        if not _spilling(resumed):
            break
    assert not _spilling(resumed)
    assert not (tmp_path / "stock" / "spill.json").exists()
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=total)
    assert sorted(decode_tick(m.value()).trade_id or 0 for m in messages) == list(range(total))
