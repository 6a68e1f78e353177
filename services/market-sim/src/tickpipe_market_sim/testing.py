"""Helpers for tests that need a simulator: an in-process server on a free port, /stats.

    async with running_sim(max_events_per_symbol=50, trading="while_subscribed") as sim:
        stream = StockDataStream("k", "s", raw_data=True, url_override=sim.url("/v2/iex"))
        ...
        stats = await fetch_stats(sim)

Settings not given keep their environment/default values; host and port default to
loopback and a free port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tickpipe_market_sim.__main__ import build_server
from tickpipe_market_sim.server import SimServer
from tickpipe_market_sim.settings import SimSettings


@asynccontextmanager
async def running_sim(**overrides: Any) -> AsyncIterator[SimServer]:
    settings = SimSettings(**{"host": "127.0.0.1", "port": 0, **overrides})
    server = build_server(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, bytes]:
    """(status, content type, body) of a plain HTTP GET; enough for the sim's endpoints."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers.get("Content-Type", ""), body


async def fetch_stats(server: SimServer) -> dict[str, Any]:
    status, _, body = await http_get(server.port, "/stats")
    if status != 200:
        raise RuntimeError(f"/stats answered {status}")
    stats: dict[str, Any] = json.loads(body)
    return stats
