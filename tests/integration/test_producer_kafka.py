"""The producer runtime against a real broker: publishing, headers, replay, Kafka outages."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.kafka_helpers import read_topic
from tests.unit.ticks import TS, bar, trade
from tickpipe_common.kafka_config import producer_config
from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.pipeline import TickPipeline
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.replay import replay_backup
from tickpipe_common.schema import AssetClass, decode_tick
from tickpipe_common.settings import KafkaSettings
from tickpipe_producer_stocks.settings import StockProducerSettings

DAY = 86_400 * 10**9


def _publisher(bootstrap: str, topic: str) -> tuple[KafkaPublisher, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    settings = KafkaSettings(kafka_bootstrap_servers=bootstrap)
    conf = producer_config(settings, "producer-stocks")
    return KafkaPublisher(conf, topic, "producer-stocks", metrics), registry


def test_published_ticks_arrive_keyed_with_headers(kafka_bootstrap: str, fresh_topic: str) -> None:
    publisher, registry = _publisher(kafka_bootstrap, fresh_topic)
    ticks = [trade(trade_id=i, symbol=("AAPL", "MSFT")[i % 2]) for i in range(50)] + [bar()]
    for tick in ticks:
        assert publisher.publish(tick)
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
    writer = CsvBackupWriter(tmp_path)
    for day in range(3):
        for i in range(10):
            writer.write(trade(ts_ns=TS + day * DAY + i, trade_id=day * 100 + i))
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
    publisher, _ = _publisher("127.0.0.1:9", "market_ticks")
    metrics = ProducerMetrics(CollectorRegistry())
    assert not publisher.check_connection(timeout=2)
    backup = CsvBackupWriter(tmp_path)
    pipeline = TickPipeline(
        AssetClass.STOCK, "iex", PriceChangeFilter(every_tick=True), backup, publisher, metrics
    )
    raw = {"T": "t", "S": "AAPL", "i": 1, "x": "V", "p": 1.0, "s": 1, "t": "2024-03-01T14:30:00Z"}
    for i in range(5):
        pipeline.handle({**raw, "i": i})
    backup.close()
    ok, details = publisher.healthy()
    assert not ok
    assert details["kafka_brokers_down"] is True
    assert backup.rows_written == 5
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
    publisher = KafkaPublisher(conf, fresh_topic, "producer-stocks", ProducerMetrics(registry))
    ticks = [trade(trade_id=i) for i in range(100)]
    for tick in ticks:
        assert publisher.publish(tick)
    assert publisher.delivered == 0
    publisher._replace_producer()
    assert publisher.requeued == 100
    assert publisher.flush(90) == 0
    assert (publisher.delivered, publisher.failed) == (100, 0)
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=100)
    ids = [decode_tick(m.value()).trade_id or 0 for m in messages]
    assert ids == list(range(100))  # all of them, once, in order (one symbol, one partition)
