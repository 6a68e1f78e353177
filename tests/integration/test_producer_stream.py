"""The stream supervisor with the real alpaca-py client against the simulator: subscribing,
reconnecting after the server goes away, and reconnecting when the stream falls silent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from tickpipe_common.backoff import Backoff
from tickpipe_common.producer.stream import StreamSupervisor
from tickpipe_market_sim.testing import fetch_stats, running_sim
from tickpipe_producer_stocks.settings import StockProducerSettings
from tickpipe_producer_stocks.stream import make_stock_stream

pytestmark = pytest.mark.timeout(90)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Mapping[str, Any]] = []
        self.connects = 0

    async def on_message(self, msg: Mapping[str, Any]) -> None:
        self.messages.append(msg)

    def on_connect(self) -> None:
        self.connects += 1


def _supervisor(url: str, recorder: Recorder, stale_after: float = 30.0) -> StreamSupervisor:
    settings = StockProducerSettings(
        alpaca_data_stream_url="ws://unused",
        symbols=("AAPL", "MSFT"),
        channels=("trades", "quotes"),
        stale_after_seconds=stale_after,
        reconnect_initial_seconds=0.1,
        reconnect_max_seconds=0.5,
    )
    return StreamSupervisor(
        make_stream=lambda: make_stock_stream(settings, url),
        symbols=settings.symbols,
        channels=settings.channels,
        on_message=recorder.on_message,
        on_connect=recorder.on_connect,
        backoff=Backoff(0.1, 0.5),
    )


async def _until(condition: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_streams_and_stops_cleanly() -> None:
    asyncio.run(_test_streams_and_stops_cleanly())


async def _test_streams_and_stops_cleanly() -> None:
    recorder = Recorder()
    async with running_sim(rate_per_symbol=50, max_events_per_symbol=20) as sim:
        supervisor = _supervisor(sim.url("/v2/iex"), recorder)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await _until(lambda: len(recorder.messages) >= 80, 20, "80 messages")
        connected_while_streaming = supervisor.connected
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        stats = await fetch_stats(sim)
    assert connected_while_streaming
    assert not supervisor.connected
    assert recorder.connects == 1
    sent = sum(n for kinds in stats["sent"]["/v2/iex"].values() for n in kinds.values())
    assert sent == len(recorder.messages) == 80


def test_reconnects_after_the_server_restarts() -> None:
    asyncio.run(_test_reconnects_after_the_server_restarts())


async def _test_reconnects_after_the_server_restarts() -> None:
    recorder = Recorder()
    async with running_sim(rate_per_symbol=50) as sim:
        port = sim.port
        supervisor = _supervisor(sim.url("/v2/iex"), recorder)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await _until(lambda: len(recorder.messages) >= 10, 20, "first messages")
    # The simulator is gone; bring a new one up on the same port.
    seen = len(recorder.messages)
    async with running_sim(rate_per_symbol=50, port=port):
        await _until(lambda: recorder.connects >= 2, 30, "a reconnect")
        await _until(lambda: len(recorder.messages) > seen + 10, 20, "messages after reconnect")
        stop.set()
        await asyncio.wait_for(task, timeout=10)


def test_silent_stream_is_dropped_and_reconnected() -> None:
    asyncio.run(_test_silent_stream_is_dropped_and_reconnected())


async def _test_silent_stream_is_dropped_and_reconnected() -> None:
    recorder = Recorder()
    # Five events per symbol and kind, then silence: the stale watchdog must reconnect.
    async with running_sim(rate_per_symbol=50, max_events_per_symbol=5) as sim:
        supervisor = _supervisor(sim.url("/v2/iex"), recorder, stale_after=1.0)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await _until(lambda: recorder.connects >= 2, 20, "a reconnect after silence")
        stop.set()
        await asyncio.wait_for(task, timeout=10)
