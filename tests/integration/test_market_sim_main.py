"""The simulator as a process: JSON logs, SIGTERM → 1001 to clients and exit 0, bad config → 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tickpipe_market_sim.testing import http_get

pytestmark = pytest.mark.timeout(60)

CONSOLE_SCRIPT = Path(sys.executable).parent / "tickpipe-market-sim"


def sim_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SIM_", "LOG_"))}
    return env | {"SIM_HOST": "127.0.0.1", "SIM_PORT": "0", "LOG_FORMAT": "json"} | extra


async def next_event(stdout: asyncio.StreamReader, event: str) -> dict[str, Any]:
    """Read JSON log lines until ``event``; every line must be a JSON log record."""
    while True:
        line = await asyncio.wait_for(stdout.readline(), 20)
        assert line, f"the process ended before logging {event}"
        record: dict[str, Any] = json.loads(line)
        assert record["service"] == "market-sim"
        if record["event"] == event:
            return record


async def read_until_closed(ws: ClientConnection) -> None:
    """Discard whatever still arrives; raises ConnectionClosed when the server closes."""
    while True:
        await asyncio.wait_for(ws.recv(), 10)


def test_sigterm_closes_clients_with_1001_and_exits_0() -> None:
    async def scenario() -> tuple[int | None, int, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tickpipe_market_sim",
            env=sim_env(SIM_RATE_PER_SYMBOL="50"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            listening = await next_event(process.stdout, "sim_listening")
            port = listening["port"]
            assert (await http_get(port, "/healthz"))[0] == 200
            async with connect(f"ws://127.0.0.1:{port}/v2/iex") as ws:
                await ws.recv()
                await ws.send('{"action":"subscribe","trades":["AAPL"]}')
                assert json.loads(await ws.recv())[0]["code"] == 401
                refused = await next_event(process.stdout, "protocol_error")
                assert (refused["code"], refused["text"]) == (401, "not authenticated")
                await ws.send('{"action":"auth","key":"k","secret":"s"}')
                await ws.recv()
                await ws.send('{"action":"subscribe","trades":["AAPL"]}')
                await ws.recv()
                await ws.recv()  # data flows
                subscribed = await next_event(process.stdout, "subscription_changed")
                process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed):
                    await read_until_closed(ws)
                close_code = ws.close_code
            returncode = await asyncio.wait_for(process.wait(), 10)
            return close_code, returncode, subscribed
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    close_code, returncode, subscribed = asyncio.run(scenario())
    assert close_code == 1001
    assert returncode == 0
    assert subscribed["subscriptions"] == {
        "trades": ["AAPL"],
        "corrections": ["AAPL"],
        "cancelErrors": ["AAPL"],
    }


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "tickpipe_market_sim"], [str(CONSOLE_SCRIPT)]],
    ids=["python -m", "console script"],
)
def test_bad_configuration_exits_2_naming_the_variable(command: list[str]) -> None:
    async def scenario() -> tuple[int, bytes]:
        process = await asyncio.create_subprocess_exec(
            *command,
            env=sim_env(SIM_RATE_PER_SYMBOL="fast"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 20)
        assert process.returncode is not None
        return process.returncode, stderr

    returncode, stderr = asyncio.run(scenario())
    assert returncode == 2
    assert b"SIM_RATE_PER_SYMBOL" in stderr
