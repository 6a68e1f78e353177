"""The metrics the services export: consistent names, bounded labels, and the README's
catalogue listing exactly them, with their types and labels."""

from __future__ import annotations

import re
import threading
import time
from typing import cast

import pytest
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, generate_latest

from tests.observability_helpers import README, exported_metrics
from tickpipe_common.producer.metrics import OTHER_SYMBOLS, ProducerMetrics, SymbolLabels
from tickpipe_common.schema import RejectReason
from tickpipe_consumer.dlq import DlqPublisher
from tickpipe_consumer.loop import ConsumerLoop
from tickpipe_consumer.metrics import ConsumerMetrics
from tickpipe_consumer.writer import TickWriter, WriteResult, tally
from tickpipe_market_sim.stats import SimMetrics
from tickpipe_producer_stocks.settings import StockProducerSettings

_ROW = re.compile(
    r"^\| `(tickpipe_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \| ([^|]+) \|$",
    re.MULTILINE,
)


def _catalogue() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, kind, labels, meaning in _ROW.findall(README.read_text()):
        assert name not in rows, f"{name} is twice in the README's catalogue"
        assert meaning.strip(), name
        rows[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def test_the_readme_catalogue_lists_every_metric_with_its_type_and_labels() -> None:
    exported = exported_metrics()
    catalogue = _catalogue()
    assert set(exported) - set(catalogue) == set(), "exported but not in the README catalogue"
    assert set(catalogue) - set(exported) == set(), "in the README catalogue but not exported"
    for name, (kind, labels) in exported.items():
        assert catalogue[name][0] == kind, name
        assert sorted(catalogue[name][1]) == sorted(labels), name


def test_names_follow_the_prometheus_conventions() -> None:
    for name, (kind, labels) in exported_metrics().items():
        assert re.fullmatch(r"tickpipe_(producer|consumer|sim|service)_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        # (one exception: the stream-silence gauge keeps the issue's own name, in seconds)
        timed = "latency" in name or "seconds" in name or "timestamp" in name
        if timed and name != "tickpipe_producer_seconds_since_last_message":
            assert name.endswith("_seconds"), f"{name}: durations and times in seconds"
        # Labels a scrape adds must not be exported (they would become exported_*).
        assert not {"job", "instance", "service", "namespace", "pod"} & set(labels), name
        if "symbol" in labels:
            assert name in {
                "tickpipe_producer_symbol_ticks_total",
                "tickpipe_producer_last_tick_timestamp_seconds",
            }, f"{name}: per-symbol labels only behind METRICS_PER_SYMBOL"


def _symbol_labels(registry: CollectorRegistry) -> set[str]:
    text = generate_latest(registry).decode()
    return set(re.findall(r'symbol="([^"]*)"', text))


def test_per_symbol_series_are_off_by_default() -> None:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry, component="producer-stocks")
    for i in range(500):
        metrics.symbol_tick(f"SYM{i}", time.time_ns())
    assert _symbol_labels(registry) == set()


def test_symbols_beyond_the_limit_are_folded_into_other() -> None:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(
        registry, component="producer-crypto", per_symbol=True, symbol_limit=2
    )
    base = 1_700_000_000 * 10**9
    for i, symbol in enumerate(["AAA", "BBB", "CCC", "AAA", "DDD", "EEE", "BBB"]):
        metrics.symbol_tick(symbol, base + i * 10**9)
    assert _symbol_labels(registry) == {"AAA", "BBB", OTHER_SYMBOLS}
    count = "tickpipe_producer_symbol_ticks_total"
    assert registry.get_sample_value(count, {"symbol": "AAA"}) == 2
    assert registry.get_sample_value(count, {"symbol": "BBB"}) == 2
    assert registry.get_sample_value(count, {"symbol": OTHER_SYMBOLS}) == 3
    last = "tickpipe_producer_last_tick_timestamp_seconds"
    assert registry.get_sample_value(last, {"symbol": OTHER_SYMBOLS}) == pytest.approx(
        1_700_000_005
    )
    assert registry.get_sample_value(last, {"symbol": "BBB"}) == pytest.approx(1_700_000_006)
    # an older tick does not move the newest time back
    metrics.symbol_tick("AAA", base - 10**9)
    assert registry.get_sample_value(last, {"symbol": "AAA"}) == pytest.approx(1_700_000_003)


def test_symbol_labels_stay_bounded() -> None:
    labels = SymbolLabels(3)
    seen = {labels(f"S{i}") for i in range(1000)}
    assert seen == {"S0", "S1", "S2", OTHER_SYMBOLS}
    assert SymbolLabels(0)("AAPL") == OTHER_SYMBOLS
    with pytest.raises(ValueError, match="limit"):
        SymbolLabels(-1)


def test_per_symbol_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPACA_DATA_STREAM_URL", "ws://127.0.0.1:8765")
    settings = StockProducerSettings()
    assert (settings.metrics_per_symbol, settings.metrics_symbol_limit) == (False, 50)
    monkeypatch.setenv("METRICS_PER_SYMBOL", "true")
    monkeypatch.setenv("METRICS_SYMBOL_LIMIT", "7")
    settings = StockProducerSettings()
    assert (settings.metrics_per_symbol, settings.metrics_symbol_limit) == (True, 7)
    monkeypatch.setenv("METRICS_SYMBOL_LIMIT", "-1")
    with pytest.raises(ValueError, match=r"metrics_symbol_limit"):
        StockProducerSettings()


def test_every_service_says_what_it_is_and_whether_it_is_ready() -> None:
    producer, consumer, sim = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    metrics = ProducerMetrics(producer, component="producer-stocks")
    ConsumerMetrics(consumer).ready.set(1)
    SimMetrics(sim)
    metrics.ready.set(0)
    for registry, component in (
        (producer, "producer-stocks"),
        (consumer, "consumer"),
        (sim, "market-sim"),
    ):
        text = generate_latest(registry).decode()
        assert re.search(
            rf'tickpipe_service_info{{component="{component}",version="[^"]+"}} 1\.0', text
        )
    ready = "tickpipe_service_ready"
    assert producer.get_sample_value(ready, {"component": "producer-stocks"}) == 0
    assert producer.get_sample_value("tickpipe_producer_ready") == 0
    assert consumer.get_sample_value(ready, {"component": "consumer"}) == 1
    assert consumer.get_sample_value("tickpipe_consumer_ready") == 1
    metrics.ready.set(1)
    assert producer.get_sample_value(ready, {"component": "producer-stocks"}) == 1


def test_counters_export_no_created_series_and_dlq_reasons_start_at_zero() -> None:
    registry = CollectorRegistry()
    ConsumerMetrics(registry)
    text = generate_latest(registry).decode()
    assert "_created" not in text
    for reason in RejectReason:
        count = registry.get_sample_value(
            "tickpipe_consumer_dlq_messages_total", {"reason": reason}
        )
        assert count == 0, reason


def test_end_to_end_latency_leaves_out_bars() -> None:
    registry = CollectorRegistry()
    loop = ConsumerLoop(
        cast(Consumer, object()),
        cast(TickWriter, object()),
        cast(DlqPublisher, object()),
        ConsumerMetrics(registry),
        threading.Event(),
        batch_max_messages=10,
        batch_max_seconds=0.1,
        max_future_seconds=300,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.02,
        shutdown_timeout_seconds=1,
    )
    now = time.time_ns()
    minute_ago = now - 60 * 10**9
    inserted = [
        ("trade", now - 10**8),
        ("trade", now - 2 * 10**8),
        ("bar", minute_ago),
        ("daily_bar", minute_ago),
    ]
    result = WriteResult(tally(inserted), now, 0.01, "copy")
    loop._record(4, result)
    name = "tickpipe_consumer_end_to_end_latency_seconds"
    assert registry.get_sample_value(f"{name}_count") == 2
    assert registry.get_sample_value(f"{name}_sum") == pytest.approx(0.3)
    assert registry.get_sample_value(f"{name}_bucket", {"le": "0.25"}) == 2
    assert registry.get_sample_value("tickpipe_consumer_rows_inserted_total", {"kind": "bar"}) == 1
