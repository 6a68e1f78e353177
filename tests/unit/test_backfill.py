"""Gaps and their windows: what opens and closes a gap, how wide its fetch is, that pending
windows survive a restart, and where a restarted producer backfills from."""

from __future__ import annotations

import asyncio
import gzip
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.ticks import TS, back_up, bar, trade
from tickpipe_common.producer.backfill import BAR_NS, Backfiller, GapWatch, Window, fetch_range
from tickpipe_common.producer.csv_backup import CsvBackupWriter, newest_ticks
from tickpipe_common.producer.handoff import HandOff
from tickpipe_common.producer.metrics import ProducerMetrics
from tickpipe_common.producer.settings import rest_url_for_stream
from tickpipe_common.schema import AssetClass
from tickpipe_producer_stocks.settings import StockProducerSettings

SECOND = 10**9


def _settings(**overrides: Any) -> StockProducerSettings:
    return StockProducerSettings(
        alpaca_data_stream_url="ws://127.0.0.1:1",
        channels=("trades", "quotes", "bars"),
        **overrides,
    )


class NoPages:
    def pages(self, kind: str, symbols: Any, start_ns: int, end_ns: int) -> Any:
        raise AssertionError("not fetched in these tests")


class NoSink:
    def submit_backfill(self, messages: list[Any], stop: threading.Event) -> bool:
        raise AssertionError("not fetched in these tests")


def _backfiller(tmp_path: Path, metrics: ProducerMetrics | None = None) -> Backfiller:
    return Backfiller(
        NoPages(),
        NoSink(),
        _settings(),
        metrics or ProducerMetrics(CollectorRegistry()),
        tmp_path / "backfill.json",
        lambda: ["AAPL"],
        threading.Event(),
    )


def test_windows_widen_by_the_margin_and_bars_by_a_minute_more() -> None:
    settings = _settings(backfill_margin_seconds=5)
    window = Window(TS, TS + 10 * SECOND, "reconnect")
    assert fetch_range(settings, window, "trades") == (TS - 5 * SECOND, TS + 15 * SECOND)
    assert fetch_range(settings, window, "bars") == (TS - 5 * SECOND - BAR_NS, TS + 15 * SECOND)
    # A producer that was off for a week gets the newest BACKFILL_MAX_SECONDS back.
    week = Window(TS, TS + 7 * 86_400 * SECOND, "restart")
    capped = _settings(backfill_margin_seconds=0, backfill_max_seconds=3600)
    assert fetch_range(capped, week, "trades") == (week.end_ns - 3600 * SECOND, week.end_ns)


def _frame(*times: int, kind: str = "t") -> list[Any]:
    return [{"T": kind, "S": "AAPL", "t": t} for t in times]


async def _deliver(handoff: HandOff, frame: list[Any]) -> None:
    handoff.receive_frame(frame)
    await asyncio.sleep(0)  # the hand-over runs on the loop's next turn


def test_a_reconnect_gap_runs_from_the_watermark_to_the_first_batch_after_it(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    metrics = ProducerMetrics(registry)
    handoff = HandOff(10_000)
    backfiller = _backfiller(tmp_path, metrics)
    gaps = GapWatch(handoff, backfiller, metrics, restart_from_ns=None)

    async def scenario() -> None:
        gaps.on_connect(first=True)  # a fresh producer: nothing to backfill
        assert backfiller.pending == 0
        await _deliver(handoff, _frame(TS + 1, TS + 5))
        # A bar is stamped with its minute's start: it never moves the watermark back.
        await _deliver(handoff, _frame(TS - 30 * SECOND, kind="b"))
        assert handoff.newest_ns == TS + 5
        gaps.on_connect(first=False)
        gaps.on_connect(first=False)  # again before any data: the gap keeps its start
        assert backfiller.pending == 1
        # The first batch after the reconnect: its newest time ends the gap (a bar first in
        # it would otherwise end it a minute early).
        await _deliver(handoff, [*_frame(TS - 60 * SECOND, kind="b"), *_frame(TS + 9 * SECOND)])
        await _deliver(handoff, _frame(TS + 10 * SECOND))

    asyncio.run(scenario())
    (window,) = backfiller._windows
    assert (window.start_ns, window.end_ns, window.reason) == (TS + 5, TS + 9 * SECOND, "reconnect")
    assert backfiller.pending == 1  # queued, the thread is not running here
    gaps_seen = registry.get_sample_value("tickpipe_producer_gaps_total", {"reason": "reconnect"})
    assert gaps_seen == 1
    seconds = registry.get_sample_value("tickpipe_producer_gap_seconds_sum")
    assert seconds == pytest.approx((9 * SECOND - 5) / SECOND)


def test_a_restarted_producer_backfills_from_the_backup_and_remembers_pending_windows(
    tmp_path: Path,
) -> None:
    handoff = HandOff(10_000)
    backfiller = _backfiller(tmp_path)
    gaps = GapWatch(
        handoff, backfiller, ProducerMetrics(CollectorRegistry()), restart_from_ns=TS - SECOND
    )

    async def scenario() -> None:
        gaps.on_connect(first=True)
        await _deliver(handoff, _frame(TS + 3 * SECOND))

    asyncio.run(scenario())
    # Kept on disk until done: a crash mid-backfill does not forget the window.
    again = _backfiller(tmp_path)
    assert again._windows == backfiller._windows
    (window,) = again._windows
    assert (window.start_ns, window.end_ns, window.reason) == (
        TS - SECOND,
        TS + 3 * SECOND,
        "restart",
    )


def test_the_newest_backup_tick_is_found_among_older_backfilled_rows(tmp_path: Path) -> None:
    assert newest_ticks(tmp_path, AssetClass.STOCK) is None
    writer = CsvBackupWriter(tmp_path, AssetClass.STOCK, compress=False)
    back_up(writer, trade(ts_ns=TS, trade_id=1))
    back_up(writer, trade(ts_ns=TS + 7, trade_id=2, symbol="MSFT"))
    back_up(writer, trade(ts_ns=TS - 3600 * SECOND, trade_id=3, symbol="NVDA"))  # backfilled
    back_up(writer, bar(ts_ns=TS - 60 * SECOND, symbol="AAPL", asset_class="stock", feed="iex"))
    writer.close()
    assert newest_ticks(tmp_path, AssetClass.STOCK) == (TS + 7, {"AAPL", "MSFT", "NVDA"})

    # Only an archived (gzipped) day: read through it.
    (path,) = (tmp_path / "stock").glob("*.csv")
    with path.open("rb") as src, gzip.open(path.with_suffix(".csv.gz"), "wb") as dst:
        dst.write(src.read())
    path.unlink()
    assert newest_ticks(tmp_path, AssetClass.STOCK) == (TS + 7, {"AAPL", "MSFT", "NVDA"})


@pytest.mark.parametrize(
    ("stream", "rest"),
    [
        ("wss://stream.data.alpaca.markets", "https://data.alpaca.markets"),
        ("wss://stream.data.sandbox.alpaca.markets", "https://data.sandbox.alpaca.markets"),
        ("ws://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("ws://market-sim:8765/", "http://market-sim:8765"),
    ],
)
def test_the_history_goes_with_the_stream(stream: str, rest: str) -> None:
    assert rest_url_for_stream(stream) == rest


def test_rest_url_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings().data_rest_url() == "http://127.0.0.1:1"
    assert _settings(alpaca_data_rest_url="http://h:9/").data_rest_url() == "http://h:9"
    assert _settings(alpaca_data_rest_url="").data_rest_url() == "http://127.0.0.1:1"
    with pytest.raises(ValueError, match="ALPACA_DATA_REST_URL"):
        _settings(alpaca_data_rest_url="https://data.alpaca.markets")
    # Without keys and without backfill, Alpaca's history is never asked.
    off = _settings(alpaca_data_rest_url="https://data.alpaca.markets", backfill_enabled=False)
    assert not off.backfill_enabled
    with pytest.raises(ValueError, match="RECONNECT_LIMIT_MAX_SECONDS"):
        _settings(reconnect_limit_seconds=10, reconnect_limit_max_seconds=5)
