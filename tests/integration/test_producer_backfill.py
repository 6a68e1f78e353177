"""The backfill path against the real parts: alpaca-py's historical clients paging through the
simulator's history, 429s backed off, backfilled ticks published with their header and equal
to what the market did, and ticks a SIGKILL caught in librdkafka's queue re-sent by the next
start from the delivery watermark."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from msgpack import Timestamp
from prometheus_client import CollectorRegistry

from tests.kafka_helpers import read_topic
from tests.processes import wait_for
from tests.unit.ticks import TS
from tickpipe_common.kafka_config import producer_config
from tickpipe_common.producer import historical
from tickpipe_common.producer.backfill import Backfiller, Window
from tickpipe_common.producer.csv_backup import CsvBackupWriter
from tickpipe_common.producer.handoff import HandOff
from tickpipe_common.producer.historical import HistoricalSource, Stopped
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.price_filter import PriceChangeFilter
from tickpipe_common.producer.publisher import KafkaPublisher
from tickpipe_common.producer.sink import TickSink
from tickpipe_common.schema import HEADER_BACKFILL, AssetClass, decode_tick
from tickpipe_common.settings import KafkaSettings
from tickpipe_common.timestamps import format_rfc3339_ns, parse_rfc3339_ns
from tickpipe_market_sim.server import SimServer
from tickpipe_market_sim.testing import fetch_stats, running_sim
from tickpipe_producer_stocks.settings import StockProducerSettings

SYMBOLS = ("AAPL", "MSFT")


def _settings(port: int, **overrides: Any) -> StockProducerSettings:
    return StockProducerSettings(
        alpaca_data_stream_url=f"ws://127.0.0.1:{port}",
        symbols=SYMBOLS,
        channels=("trades", "quotes", "bars"),
        backfill_margin_seconds=0,
        **overrides,
    )


def _sink(
    bootstrap: str, topic: str, backup_dir: Path, registry: CollectorRegistry
) -> tuple[TickSink, KafkaPublisher, CsvBackupWriter]:
    metrics = ProducerMetrics(registry)
    conf = producer_config(KafkaSettings(kafka_bootstrap_servers=bootstrap), "producer-stocks")
    publisher = KafkaPublisher(conf, topic, "producer-stocks", "stock", metrics)
    backup = CsvBackupWriter(backup_dir, AssetClass.STOCK)
    sink = TickSink(
        HandOff(10_000),
        "stock",
        "iex",
        PriceChangeFilter(every_tick=True),
        backup,
        publisher,
        metrics,
    )
    return sink, publisher, backup


def _backfiller(
    settings: StockProducerSettings, sink: TickSink, stop: threading.Event, backup_dir: Path
) -> Backfiller:
    """A stock producer's backfill of SYMBOLS from the simulator's history into ``sink``."""
    return Backfiller(
        HistoricalSource("stock", settings, stop),
        sink,
        settings,
        sink._metrics,
        backup_dir / "stock" / "backfill.json",
        lambda: list(SYMBOLS),
        stop,
    )


async def _stock_trades_kept(sim: SimServer) -> int:
    kept = (await fetch_stats(sim))["history"]["kept"].get("/v2/iex", {})
    return int(kept.get("trade", {}).get("events", 0))


async def _market_trades(sim: SimServer, n: int) -> None:
    """Until the simulated market has made ``n`` more stock trades (of every symbol)."""
    target = await _stock_trades_kept(sim) + n
    async with asyncio.timeout(30):
        while True:
            if await _stock_trades_kept(sim) >= target:
                return
            await asyncio.sleep(0.05)  # polling the simulator's /stats


def test_backfilled_ticks_are_what_the_market_did_and_carry_the_header(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(historical, "PAGE_LIMIT", 40)  # several pages per kind
    registry = CollectorRegistry()

    async def scenario() -> list[tuple[str, dict[str, Any]]]:
        async with running_sim(
            trading="always", rate_per_symbol=50, stock_symbols=SYMBOLS, bar_interval=60
        ) as sim:
            start = time.time_ns()
            await _market_trades(sim, 150)  # on its own: nobody is connected
            end = time.time_ns()
            settings = _settings(sim.port)
            sink, publisher, backup = _sink(kafka_bootstrap, fresh_topic, tmp_path, registry)
            sink.start()
            stop = threading.Event()
            backfiller = _backfiller(settings, sink, stop, tmp_path)
            backfiller.submit(Window(start, end, "reconnect", due=0.0), opened=False)
            backfiller.start()
            passes = "tickpipe_producer_backfill_passes_total"
            await asyncio.to_thread(
                wait_for,
                lambda: registry.get_sample_value(passes, {"outcome": "done"}) == 1,
                30,
                "the backfill pass",
            )
            truth = await asyncio.to_thread(_all_trades, sim.port, start, end)
            stop.set()
            await asyncio.to_thread(backfiller.join, 5)
            sink._handoff.close()
            await asyncio.to_thread(sink.join, 10)
            assert publisher.flush(30) == 0
            backup.close()
            return truth

    truth = asyncio.run(scenario())
    assert len(truth) > 100
    backfilled = sum(
        registry.get_sample_value(
            "tickpipe_producer_ticks_backfilled_total", {"kind": kind, "asset_class": "stock"}
        )
        or 0
        for kind in ("trade", "quote", "bar")
    )
    messages = read_topic(kafka_bootstrap, fresh_topic, expected=int(backfilled))
    assert len(messages) == backfilled
    trades = [m for m in messages if decode_tick(m.value()).kind == "trade"]
    assert all(dict(m.headers() or [])[HEADER_BACKFILL] == b"1" for m in trades)
    got = sorted(
        (t.symbol, t.ts_ns, t.trade_id, t.price)
        for t in map(decode_tick, (m.value() for m in trades))
    )
    want = sorted((s, parse_rfc3339_ns(t["t"]), t["i"], t["p"]) for s, t in truth)
    assert got == want  # every nanosecond kept, none missing, none twice
    labels = {"kind": "trade", "asset_class": "stock"}
    assert registry.get_sample_value("tickpipe_producer_ticks_backfilled_total", labels) == len(
        truth
    )
    assert registry.get_sample_value("tickpipe_producer_backfill_pending") == 0
    assert not (tmp_path / "stock" / "backfill.json").read_text().strip("[]")


def _all_trades(port: int, start: int, end: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    token = ""
    while True:
        url = (
            f"http://127.0.0.1:{port}/v2/stocks/trades?symbols={','.join(SYMBOLS)}&limit=10000"
            f"&start={format_rfc3339_ns(start)}&end={format_rfc3339_ns(end)}"
            + (f"&page_token={token}" if token else "")
        )
        request = urllib.request.Request(
            url, headers={"APCA-API-KEY-ID": "k", "APCA-API-SECRET-KEY": "s"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        for symbol, items in body["trades"].items():
            out.extend((symbol, item) for item in items)
        token = body.get("next_page_token") or ""
        if not token:
            return out


def test_a_429_is_counted_and_backed_off() -> None:
    errors: list[str] = []

    async def scenario() -> None:
        async with running_sim(
            trading="always", history_rate_limit=1, stock_symbols=SYMBOLS
        ) as sim:
            stop = threading.Event()
            source = HistoricalSource("stock", _settings(sim.port), stop, on_error=errors.append)
            now = time.time_ns()
            first = await asyncio.to_thread(
                lambda: list(source.pages("trades", SYMBOLS, now - 10**9, now))
            )
            assert first is not None

            def second() -> None:
                list(source.pages("trades", SYMBOLS, now - 10**9, now))

            task = asyncio.create_task(asyncio.to_thread(second))
            await asyncio.to_thread(wait_for, lambda: "rate_limited" in errors, 10, "a 429")
            stop.set()  # waiting out the minute's window; stopping ends the wait at once
            with pytest.raises(Stopped):
                async with asyncio.timeout(5):
                    await task

    asyncio.run(scenario())
    assert errors == ["rate_limited"]


def test_what_a_sigkill_caught_in_the_kafka_queue_is_resent_by_the_next_start(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    # A run whose broker never acknowledges anything (no broker there), killed: no flush.
    registry = CollectorRegistry()
    sink, publisher, backup = _sink("127.0.0.1:1", fresh_topic, tmp_path, registry)
    sink.handle([(TS, [_raw_trade(i) for i in range(1, 51)])])
    sink._checkpoint()
    sink.handle([(TS, [_raw_trade(i) for i in range(51, 101)])])
    sink._checkpoint()  # the first epoch is not acknowledged: the watermark stays
    assert publisher.pending() >= 100  # (plus the client's own requests)
    state = (tmp_path / "stock" / "delivered.json").read_text()
    assert '"offset": ' in state  # this run's first row: nothing of it was acknowledged
    backup.close()
    del sink, publisher  # SIGKILL: the client's queue is gone with the process

    # The next start re-publishes the unacknowledged tail of the backup by itself.
    registry = CollectorRegistry()
    sink, publisher, backup = _sink(kafka_bootstrap, fresh_topic, tmp_path, registry)
    assert _spilling(sink)
    sink.start()
    wait_for(lambda: not _spilling(sink), 30, "the unacknowledged tail re-published")
    sink._handoff.close()
    assert sink.join(10)
    assert publisher.flush(30) == 0
    ids = sorted(
        decode_tick(m.value()).trade_id or 0
        for m in read_topic(kafka_bootstrap, fresh_topic, expected=100)
    )
    assert ids == list(range(1, 101))
    # Acknowledged now, and stopped cleanly: a third start re-sends nothing.
    sink.stopped(0)
    backup.close()
    third, _, backup = _sink(kafka_bootstrap, fresh_topic, tmp_path, CollectorRegistry())
    assert not _spilling(third)
    backup.close()


def _spilling(sink: TickSink) -> bool:
    return sink.spill is not None


def _raw_trade(i: int) -> dict[str, Any]:
    return {
        "T": "t",
        "S": SYMBOLS[i % 2],
        "i": i,
        "x": "V",
        "p": 100.0 + i / 100,
        "s": 1,
        "t": Timestamp.from_unix_nano(TS + i),
    }


def test_a_sip_gap_is_fetched_again_after_the_delay(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """On Alpaca recent SIP history needs a paid plan: with FEED=sip every gap gets a second
    pass BACKFILL_SIP_DELAY_SECONDS after it ended (the simulator has no delay; 1 s here)."""
    registry = CollectorRegistry()

    async def scenario() -> None:
        async with running_sim(trading="always", rate_per_symbol=20, stock_symbols=SYMBOLS) as sim:
            start = time.time_ns()
            await asyncio.to_thread(wait_for, lambda: time.time_ns() > start + 10**9, 5, "1 s")
            settings = _settings(sim.port, feed="sip", backfill_sip_delay_seconds=1)
            sink, publisher, backup = _sink(kafka_bootstrap, fresh_topic, tmp_path, registry)
            sink.start()
            stop = threading.Event()
            backfiller = _backfiller(settings, sink, stop, tmp_path)
            backfiller.submit(Window(start, time.time_ns(), "reconnect"), opened=False)
            backfiller.start()
            done = "tickpipe_producer_backfill_passes_total"
            await asyncio.to_thread(
                wait_for,
                lambda: registry.get_sample_value(done, {"outcome": "done"}) == 1,
                30,
                "the first pass",
            )
            assert backfiller.pending == 1  # the second pass, due a second later
            await asyncio.to_thread(
                wait_for,
                lambda: registry.get_sample_value(done, {"outcome": "done"}) == 2,
                30,
                "the second pass",
            )
            assert backfiller.pending == 0
            stop.set()
            await asyncio.to_thread(backfiller.join, 5)
            sink._handoff.close()
            await asyncio.to_thread(sink.join, 10)
            assert publisher.flush(30) == 0
            backup.close()

    asyncio.run(scenario())
    labels = {"kind": "trade", "asset_class": "stock"}
    fetched = registry.get_sample_value("tickpipe_producer_ticks_backfilled_total", labels)
    assert fetched is not None
    assert fetched > 0
    assert fetched % 2 == 0  # the same window twice


def test_the_day_the_delivery_watermark_points_into_is_not_gzipped_under_it(
    kafka_bootstrap: str, fresh_topic: str, tmp_path: Path
) -> None:
    """Midnight: the next day's first row starts the housekeeping while the saved watermark
    still points into the day before. That day stays a plain file (a SIGKILL now re-publishes
    from it) until the watermark has moved on; then it is gzipped."""
    day = 86_400 * 10**9
    registry = CollectorRegistry()
    sink, publisher, backup = _sink(kafka_bootstrap, fresh_topic, tmp_path, registry)
    folder = tmp_path / "stock"
    state = folder / "delivered.json"

    def watermark_file() -> str:
        return str(json.loads(state.read_text())["file"]) if state.exists() else ""

    def checkpoint_into(name: str) -> bool:
        assert publisher.flush(10) == 0
        sink._checkpoint()
        return watermark_file() == name

    sink.handle([(TS, [_raw_trade(i) for i in range(1, 51)])])
    first = backup.path
    assert first is not None
    wait_for(lambda: checkpoint_into(first.name), 30, "the watermark in the first day")
    sink.handle([(TS + day, [_raw_trade(i) for i in range(51, 101)])])  # after midnight
    assert backup.path is not None
    assert backup.path != first
    housekeeper = backup._housekeeper
    assert housekeeper is not None
    housekeeper.join(30)
    assert not housekeeper.is_alive()
    assert first.exists(), "gzipped while the watermark pointed into it"
    second = backup.path
    wait_for(lambda: checkpoint_into(second.name), 30, "the watermark in the next day")
    wait_for(lambda: first.with_suffix(".csv.gz").exists(), 30, "the first day gzipped")
    assert not first.exists()
    sink._handoff.close()
    backup.close()
