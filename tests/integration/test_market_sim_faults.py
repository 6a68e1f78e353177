"""The fault controls (SIM_ADMIN): drops with and without a close frame, a mute, a 407 for
a client that stops reading, and a half-dead slot that answers a reconnect with 406."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.sim_client import AUTH, collect, error, recv_json, request, session
from tickpipe_market_sim.server import SimServer
from tickpipe_market_sim.testing import fetch_stats, http_get, running_sim

pytestmark = pytest.mark.timeout(60)


async def admin(sim: SimServer, action: str) -> dict[str, Any]:
    status, _, body = await http_get(sim.port, f"/admin/{action}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


async def until_closed(ws: Any) -> list[dict[str, Any]]:
    """Everything that still arrives before the connection closes."""
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.extend(await recv_json(ws))
        except ConnectionClosed:
            return out


def test_the_controls_are_off_unless_enabled() -> None:
    async def scenario() -> int:
        async with running_sim() as sim:
            return (await http_get(sim.port, "/admin/drop"))[0]

    assert asyncio.run(scenario()) == 404


@pytest.mark.parametrize(("how", "code"), [("close", 1001), ("abrupt", None)])
def test_drop_every_connection(how: str, code: int | None) -> None:
    async def scenario() -> tuple[dict[str, Any], int | None, dict[str, Any]]:
        async with running_sim(admin=True, rate_per_symbol=50) as sim, session(sim) as ws:
            await request(ws, {"action": "subscribe", "trades": ["AAPL"]})
            await collect(ws, 1)
            answer = await admin(sim, f"drop?how={how}")
            await until_closed(ws)
            frame = ws.protocol.close_rcvd
            received = frame.code if frame is not None else None
            return answer, received, await fetch_stats(sim)

    answer, received, stats = asyncio.run(scenario())
    assert answer == {"how": how, "dropped": 1}
    assert received == code, "a close frame, or none for an abrupt drop"
    assert stats["faults"]["dropped_connections"] == 1


def test_mute_sends_nothing_and_what_happened_meanwhile_is_missed() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with running_sim(admin=True, rate_per_symbol=100) as sim, session(sim) as ws:
            await request(ws, {"action": "subscribe", "trades": ["AAPL"]})
            before = await collect(ws, 3)
            await admin(sim, "mute?seconds=1")
            # Drain what was already on its way; then nothing comes while muted.
            silent = False
            while not silent:
                try:
                    await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    silent = True
            after = await collect(ws, 1)
            return before, after

    before, after = asyncio.run(scenario())
    assert after[0]["i"] > before[-1]["i"] + 20, "the trades of the mute were never sent"


def test_a_client_that_stops_reading_gets_407() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_sim(admin=True, rate_per_symbol=1000, max_rate=1e6) as sim:
            await admin(sim, "slow?backlog=50")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", sim.port))
            async with connect(sim.url("/v2/iex"), sock=sock, max_queue=1) as ws:
                await recv_json(ws)
                await request(ws, AUTH)
                await request(ws, {"action": "subscribe", "trades": ["*"], "quotes": ["*"]})
                return await until_closed(ws)

    received = asyncio.run(scenario())
    assert received[-1:] == error(407, "slow client")


def test_a_dropped_clients_slot_stays_half_dead() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_sim(admin=True, max_connections=1, half_dead_seconds=30) as sim:
            async with session(sim) as ws:
                await admin(sim, "drop?how=abrupt")
                await until_closed(ws)
            async with session(sim, auth=None) as again:
                return await request(again, AUTH)

    assert asyncio.run(scenario()) == error(406, "connection limit exceeded")
