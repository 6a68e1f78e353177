"""The stream supervisor with the real alpaca-py client against the simulator: subscribing,
reconnecting after the server goes away, and reconnecting when the stream falls silent."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
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
        self.frames = 0

    async def on_message(self, msg: Mapping[str, Any]) -> None:
        self.messages.append(msg)

    def on_frame(self, msgs: list[Mapping[str, Any]]) -> None:
        self.frames += 1
        self.messages.extend(msgs)

    def on_connect(self) -> None:
        self.connects += 1


# Both receive paths: alpaca-py's per-message dispatch, and whole frames (what producers use).
RECEIVE_PATHS = pytest.mark.parametrize("frame_level", [False, True], ids=["message", "frame"])


def _supervisor(
    url: str,
    recorder: Recorder,
    stale_after: float = 30.0,
    *,
    frame_level: bool = False,
    channels: tuple[str, ...] = ("trades", "quotes"),
) -> StreamSupervisor:
    settings = StockProducerSettings(
        alpaca_data_stream_url="ws://unused",
        symbols=("AAPL", "MSFT"),
        channels=channels,
        stale_after_seconds=stale_after,
        reconnect_initial_seconds=0.1,
        reconnect_max_seconds=0.5,
    )
    return StreamSupervisor(
        make_stream=lambda: make_stock_stream(settings, url),
        symbols=settings.symbols,
        channels=settings.channels,
        on_message=recorder.on_message,
        on_frame=recorder.on_frame if frame_level else None,
        on_connect=recorder.on_connect,
        backoff=Backoff(0.1, 0.5),
    )


async def _until(condition: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@RECEIVE_PATHS
def test_streams_and_stops_cleanly(frame_level: bool) -> None:
    asyncio.run(_test_streams_and_stops_cleanly(frame_level))


async def _test_streams_and_stops_cleanly(frame_level: bool) -> None:
    recorder = Recorder()
    async with running_sim(
        rate_per_symbol=50, max_events_per_symbol=20, trading="while_subscribed"
    ) as sim:
        supervisor = _supervisor(sim.url("/v2/iex"), recorder, frame_level=frame_level)
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
    if frame_level:  # the data came in whole frames, not through alpaca-py's dispatch
        assert recorder.frames > 0


@RECEIVE_PATHS
def test_corrections_cancels_statuses_and_bands_reach_the_handoff(frame_level: bool) -> None:
    """Corrections and cancel/errors come with trades (alpaca-py routes them to handlers of
    their own, the frame-level receive takes them with the trades); statuses and LULD bands
    are channels of their own (alpaca-py has no method for LULDs)."""
    asyncio.run(_test_amendments_reach_the_handoff(frame_level))


async def _test_amendments_reach_the_handoff(frame_level: bool) -> None:
    recorder = Recorder()
    async with running_sim(
        rate_per_symbol=100,
        max_events_per_symbol=60,
        trading="while_subscribed",
        correction_probability=0.2,
        cancel_probability=0.1,
        halt_probability=0.05,
    ) as sim:
        supervisor = _supervisor(
            sim.url("/v2/iex"),
            recorder,
            frame_level=frame_level,
            channels=("trades", "statuses", "lulds"),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        stats: dict[str, Any] = {}

        async def everything_arrived() -> bool:
            nonlocal stats
            stats = await fetch_stats(sim)
            return bool(stats["finished"]) and len(recorder.messages) >= stats["totals"]["messages"]

        deadline = asyncio.get_running_loop().time() + 30
        while not await everything_arrived():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert len(recorder.messages) == stats["totals"]["messages"]
    types = Counter(msg["T"] for msg in recorder.messages)
    assert types["t"] == 2 * 60
    for kind, wire_type in (
        ("trade_correction", "c"),
        ("trade_cancel", "x"),
        ("trading_status", "s"),
        ("luld", "l"),
    ):
        assert types[wire_type] == stats["totals"]["by_kind"][kind] > 0, kind
    if frame_level:
        assert recorder.frames > 0


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


@RECEIVE_PATHS
def test_silent_stream_is_dropped_and_reconnected(frame_level: bool) -> None:
    asyncio.run(_test_silent_stream_is_dropped_and_reconnected(frame_level))


async def _test_silent_stream_is_dropped_and_reconnected(frame_level: bool) -> None:
    recorder = Recorder()
    # Five events per symbol and kind, then silence: the stale watchdog must reconnect.
    async with running_sim(
        rate_per_symbol=50, max_events_per_symbol=5, trading="while_subscribed"
    ) as sim:
        supervisor = _supervisor(
            sim.url("/v2/iex"), recorder, stale_after=1.0, frame_level=frame_level
        )
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await _until(lambda: recorder.connects >= 2, 20, "a reconnect after silence")
        stop.set()
        await asyncio.wait_for(task, timeout=10)


class MuteProxy:
    """A TCP proxy in front of the simulator that can go mute: its open connections stay
    open but carry nothing either way (no data, no close handshake, no FIN) — a dead peer
    behind a NAT or a stuck load balancer. Connections made after ``mute()`` pass normally."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._muted: set[int] = set()
        self._generation = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def mute(self) -> None:
        self._muted.add(self._generation)
        self._generation += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        generation = self._generation
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if generation in self._muted:
                    await asyncio.Event().wait()  # swallow everything, never close
                dst.write(data)
                await dst.drain()

        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def test_a_mute_socket_reconnects_within_the_staleness_limit_and_says_so() -> None:
    asyncio.run(_test_a_mute_socket_reconnects())


async def _test_a_mute_socket_reconnects() -> None:
    """The measured fault: with STALE_AFTER_SECONDS=10 a mute socket reconnected only after
    41 s (closing it blocked for 31 s) while ``connected`` stayed true the whole time."""
    stale_after = 3.0
    recorder = Recorder()
    async with running_sim(rate_per_symbol=50) as sim:
        proxy = MuteProxy(sim.port)
        await proxy.start()
        supervisor = _supervisor(f"ws://127.0.0.1:{proxy.port}/v2/iex", recorder, stale_after)
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop))
        await _until(lambda: len(recorder.messages) >= 10, 20, "first messages")
        assert supervisor.connected
        loop = asyncio.get_running_loop()
        proxy.mute()
        muted_at = loop.time()
        await _until(lambda: not supervisor.connected, stale_after + 2, "connected to turn false")
        await _until(lambda: recorder.connects >= 2, stale_after + 10, "a reconnect")
        reconnect_after = loop.time() - muted_at
        assert reconnect_after < stale_after + 5, f"reconnected {reconnect_after:.1f}s after"
        assert supervisor.connected
        seen = len(recorder.messages)
        await _until(lambda: len(recorder.messages) > seen + 10, 20, "data after the reconnect")
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await proxy.stop()
    assert reconnect_after < stale_after + 5
