"""A plain JSON WebSocket client for the simulator's tests: welcome, auth, requests, data."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tickpipe_market_sim.server import SimServer

AUTH = {"action": "auth", "key": "key", "secret": "secret"}
CONTROL = ("success", "error", "subscription")


async def recv_json(ws: ClientConnection) -> list[dict[str, Any]]:
    frame = await asyncio.wait_for(ws.recv(), 5)
    assert isinstance(frame, str), "JSON clients get text frames"
    messages: list[dict[str, Any]] = json.loads(frame)
    assert isinstance(messages, list)
    return messages


async def request(ws: ClientConnection, message: object) -> list[dict[str, Any]]:
    """Send a request and return the server's answer, skipping market data that was
    already on its way (control messages always come alone in their frame)."""
    await ws.send(json.dumps(message))
    while True:
        frame = await recv_json(ws)
        if frame[0]["T"] in CONTROL:
            assert len(frame) == 1
            return frame


@asynccontextmanager
async def session(
    sim: SimServer, path: str = "/v2/iex", auth: dict[str, str] | None = AUTH
) -> AsyncIterator[ClientConnection]:
    """A JSON client past the welcome (and the auth, unless ``auth`` is None)."""
    async with connect(sim.url(path)) as ws:
        assert await recv_json(ws) == [{"T": "success", "msg": "connected"}]
        if auth is not None:
            assert await request(ws, auth) == [{"T": "success", "msg": "authenticated"}]
        yield ws


async def read_until_closed(ws: ClientConnection) -> None:
    """Discard whatever still arrives; raises ConnectionClosed when the server closes."""
    while True:
        await asyncio.wait_for(ws.recv(), 5)


def error(code: int, msg: str) -> list[dict[str, Any]]:
    return [{"T": "error", "code": code, "msg": msg}]


async def collect(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` market-data messages (frames may hold several)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        out.extend(await recv_json(ws))
    return out
