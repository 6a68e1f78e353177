"""The simulator over the wire with a plain WebSocket client: JSON mode, msgpack framing,
every protocol error, the HTTP endpoints, fan-out counting and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.sim_client import (
    AUTH,
    collect,
    error,
    read_until_closed,
    recv_json,
    request,
    session,
)
from tickpipe_common.timestamps import parse_rfc3339_ns
from tickpipe_market_sim.server import WEBSOCKETS_LOGGER
from tickpipe_market_sim.testing import fetch_stats, http_get, running_sim

pytestmark = pytest.mark.timeout(60)

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.fixture(autouse=True)
def log_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Run the sim's log calls for real (a bad log field only fails when emitted)."""
    caplog.set_level(logging.DEBUG, logger="tickpipe_market_sim")


def test_http_endpoints() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            assert await http_get(sim.port, "/healthz") == (
                200,
                "application/json",
                b'{"status":"ok"}',
            )
            status, _, body = await http_get(sim.port, "/readyz")
            assert (status, json.loads(body)) == (200, {"ready": True})
            status, content_type, body = await http_get(sim.port, "/metrics")
            assert status == 200
            assert content_type.startswith("text/plain")
            assert b"# TYPE tickpipe_sim_messages_sent_total counter" in body
            assert b"# TYPE tickpipe_sim_connections gauge" in body
            status, _, body = await http_get(sim.port, "/stats?pretty")
            stats = json.loads(body)
            assert status == 200
            assert stats["connections"] == {"open": 0, "total": 0, "open_by_endpoint": {}}
            assert stats["sent"] == {}
            # The market trades from the start; "generated" is the older name of "happened".
            assert stats["generated"] == stats["happened"]
            assert stats["config"]["seed"] == stats["seed"]
            assert (await http_get(sim.port, "/nope"))[0] == 404
            assert (await http_get(sim.port, "/v2/nope"))[0] == 404
            # A feed path without the WebSocket upgrade: HTTP 426.
            assert (await http_get(sim.port, "/v2/iex"))[0] == 426

    asyncio.run(scenario())


def test_json_session_from_welcome_to_data() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with running_sim(rate_per_symbol=100) as sim, session(sim, "/v2/sip") as ws:
            reply = await request(ws, {"action": "subscribe", "trades": ["AAPL"], "quotes": ["*"]})
            assert reply == [
                {
                    "T": "subscription",
                    "trades": ["AAPL"],
                    "quotes": ["*"],
                    "bars": [],
                    "updatedBars": [],
                    "dailyBars": [],
                    "statuses": [],
                    "lulds": [],
                    "corrections": ["AAPL"],
                    "cancelErrors": ["AAPL"],
                }
            ]
            return await collect(ws, 60), await fetch_stats(sim)

    messages, stats = asyncio.run(scenario())
    trades = [m for m in messages if m["T"] == "t"]
    assert trades
    assert {m["S"] for m in trades} == {"AAPL"}
    assert len({m["S"] for m in messages if m["T"] == "q"}) > 1, '"*" means every symbol'
    for message in messages:
        assert RFC3339_NS.match(message["t"]), message["t"]
        assert parse_rfc3339_ns(message["t"]) % 1000 != 0, "nanoseconds survive in JSON"
    # Live from the moment of the subscription: whatever id comes first, none is skipped.
    first = trades[0]["i"]
    assert [m["i"] for m in trades] == list(range(first, first + len(trades)))
    assert stats["per_connection"]["1"]["encoding"] == "json"


def test_msgpack_session_with_a_fragmented_subscribe() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with (
            running_sim(rate_per_symbol=100) as sim,
            connect(
                sim.url("/v1beta3/crypto/us"),
                additional_headers={"Content-Type": "application/msgpack"},
            ) as ws,
        ):
            welcome = await ws.recv()
            assert isinstance(welcome, bytes), "msgpack clients get binary frames"
            assert msgpack.unpackb(welcome) == [{"T": "success", "msg": "connected"}]
            await ws.send(msgpack.packb(AUTH))
            assert msgpack.unpackb(await ws.recv())[0]["msg"] == "authenticated"
            # alpaca-py splits a large subscribe message into frames of a fragmented message.
            packed = msgpack.packb({"action": "subscribe", "trades": ["BTC/USD", "ETH/USD"]})
            await ws.send([packed[:5], packed[5:11], packed[11:]])
            reply = msgpack.unpackb(await ws.recv())
            assert reply[0]["trades"] == ["BTC/USD", "ETH/USD"]
            assert "orderbooks" in reply[0]
            out: list[dict[str, Any]] = []
            while len(out) < 10:
                out.extend(msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5)))
            return out

    messages = asyncio.run(scenario())
    assert {m["S"] for m in messages} == {"BTC/USD", "ETH/USD"}
    for message in messages:
        assert isinstance(message["t"], msgpack.Timestamp)
        assert message["t"].nanoseconds % 1000 != 0


def test_unsubscribe_stops_the_data() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_sim(rate_per_symbol=200) as sim, session(sim) as ws:
            await request(ws, {"action": "subscribe", "trades": ["AAPL"]})
            await collect(ws, 3)
            await ws.send(json.dumps({"action": "unsubscribe", "trades": ["AAPL"]}))
            while (frame := await recv_json(ws))[0]["T"] != "subscription":
                pass  # data queued before the unsubscribe was processed
            assert frame[0]["trades"] == []
            await asyncio.sleep(0.1)  # 20 steps at 200/s
            await ws.send(json.dumps({"action": "subscribe"}))
            return await recv_json(ws)

    next_frame = asyncio.run(scenario())
    assert next_frame[0]["T"] == "subscription", "no data after the unsubscribe reply"


def test_two_clients_get_the_same_events_and_both_are_counted() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
        async with (
            running_sim(
                rate_per_symbol=200, max_events_per_symbol=5, trading="while_subscribed"
            ) as sim,
            session(sim) as one,
            session(sim) as two,
        ):
            # Data flows once the first client subscribes: the second one joins later.
            await request(one, {"action": "subscribe", "trades": ["AAPL"]})
            await request(two, {"action": "subscribe", "trades": ["AAPL", "MSFT"]})
            got_one, got_two = await collect(one, 5), await collect(two, 5)
            await asyncio.sleep(0.05)
            return got_one, got_two, await fetch_stats(sim)

    got_one, got_two, stats = asyncio.run(scenario())
    assert [m["i"] for m in got_one] == [1, 2, 3, 4, 5]
    aapl_two = [m for m in got_two if m["S"] == "AAPL"]
    assert aapl_two
    for message in aapl_two:
        assert message == got_one[message["i"] - 1], "same events, identical content"
    per = stats["per_connection"]
    sent_two = sum(per["2"]["sent"]["AAPL"].values())
    assert stats["sent"]["/v2/iex"]["AAPL"]["trade"] == 5 + sent_two
    assert per["1"]["sent"] == {"AAPL": {"trade": 5}}
    assert stats["generated"]["/v2/iex"]["AAPL"]["trade"] == 5


def test_the_test_feed_only_has_fakepaca() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with running_sim(rate_per_symbol=200) as sim, session(sim, "/v2/test") as ws:
            reply = await request(ws, {"action": "subscribe", "trades": ["*", "AAPL"]})
            assert reply[0]["trades"] == ["*", "AAPL"]
            return await collect(ws, 10)

    assert {m["S"] for m in asyncio.run(scenario())} == {"FAKEPACA"}


def test_400_invalid_syntax_keeps_the_connection() -> None:
    async def scenario() -> None:
        async with running_sim() as sim, session(sim, auth=None) as ws:
            for bad in ("{not json", '["auth"]', '{"action":"dance"}', '{"action":"auth"}'):
                await ws.send(bad)
                assert await recv_json(ws) == error(400, "invalid syntax")
            await ws.send(b"\xff")  # binary on a JSON connection, not UTF-8
            assert await recv_json(ws) == error(400, "invalid syntax")
            assert (await request(ws, AUTH))[0]["msg"] == "authenticated"
            bad_symbols = {"action": "subscribe", "trades": "AAPL"}
            assert await request(ws, bad_symbols) == error(400, "invalid syntax")

    asyncio.run(scenario())


def test_401_not_authenticated() -> None:
    async def scenario() -> None:
        async with running_sim() as sim, session(sim, auth=None) as ws:
            subscribe = {"action": "subscribe", "trades": ["AAPL"]}
            assert await request(ws, subscribe) == error(401, "not authenticated")
            assert await request(ws, {"action": "unsubscribe"}) == error(401, "not authenticated")

    asyncio.run(scenario())


def test_402_auth_failed_then_a_retry_succeeds() -> None:
    async def scenario() -> None:
        async with running_sim(api_key="key", api_secret="secret") as sim:  # noqa: S106
            async with session(sim, auth=None) as ws:
                wrong = {**AUTH, "secret": "guess"}
                assert await request(ws, wrong) == error(402, "auth failed")
                assert (await request(ws, AUTH))[0]["msg"] == "authenticated"
            # Alpaca's header authentication works too.
            headers = {"APCA-API-KEY-ID": "key", "APCA-API-SECRET-KEY": "secret"}
            async with connect(sim.url("/v2/iex"), additional_headers=headers) as ws:
                assert (await recv_json(ws))[0]["msg"] == "connected"
                assert (await recv_json(ws))[0]["msg"] == "authenticated"

    asyncio.run(scenario())


def test_403_already_authenticated() -> None:
    async def scenario() -> None:
        async with running_sim() as sim, session(sim) as ws:
            assert await request(ws, AUTH) == error(403, "already authenticated")

    asyncio.run(scenario())


def test_404_auth_timeout_closes_the_connection() -> None:
    async def scenario() -> tuple[int | None, float]:
        async with running_sim(auth_timeout=0.3) as sim, session(sim, auth=None) as ws:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await recv_json(ws) == error(404, "auth timeout")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code, loop.time() - started

    code, waited = asyncio.run(scenario())
    assert code == 1008
    assert waited < 2


def test_405_symbol_limit_exceeded_leaves_subscriptions_unchanged() -> None:
    async def scenario() -> None:
        async with running_sim(symbol_limit=2) as sim, session(sim) as ws:
            ok = await request(ws, {"action": "subscribe", "trades": ["AAPL", "MSFT"]})
            assert ok[0]["trades"] == ["AAPL", "MSFT"]
            too_many = {"action": "subscribe", "trades": ["TSLA"], "bars": ["TSLA"]}
            assert await request(ws, too_many) == error(405, "symbol limit exceeded")
            current = await request(ws, {"action": "subscribe"})
            assert (current[0]["trades"], current[0]["bars"]) == (["AAPL", "MSFT"], [])

    asyncio.run(scenario())


def test_406_connection_limit_exceeded() -> None:
    async def scenario() -> int | None:
        async with running_sim(max_connections=1) as sim, session(sim):
            async with session(sim, auth={**AUTH, "key": "other"}):
                pass  # another key may connect
            async with session(sim, "/v1beta3/crypto/us"):
                pass  # so may the same key on another endpoint
            async with session(sim, auth=None) as second:
                assert await request(second, AUTH) == error(406, "connection limit exceeded")
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(second.recv(), 5)
                return second.close_code

    assert asyncio.run(scenario()) == 1008


def test_410_invalid_subscribe_action_for_the_feed() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            async with session(sim) as stocks:
                books = {"action": "subscribe", "orderbooks": ["AAPL"]}
                assert await request(stocks, books) == error(
                    410, "invalid subscribe action for this feed"
                )
            async with session(sim, "/v1beta3/crypto/us") as crypto:
                statuses = {"action": "subscribe", "statuses": ["BTC/USD"]}
                assert (await request(crypto, statuses))[0]["code"] == 410

    asyncio.run(scenario())


def test_while_subscribed_nothing_is_generated_before_a_subscription() -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with (
            running_sim(rate_per_symbol=200, trading="while_subscribed") as sim,
            session(sim) as ws,
        ):
            await asyncio.sleep(0.1)
            before = await fetch_stats(sim)
            await request(ws, {"action": "subscribe", "trades": ["NVDA"]})
            return before, await collect(ws, 1)

    before, first = asyncio.run(scenario())
    assert before["generated"] == {}
    assert before["sent"] == {}
    assert first[0]["i"] == 1


def test_the_market_trades_before_anyone_subscribes() -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        async with running_sim(rate_per_symbol=200) as sim, session(sim) as ws:

            async def nvda_traded() -> dict[str, Any]:
                while True:
                    stats = await fetch_stats(sim)
                    if stats["happened"].get("/v2/iex", {}).get("NVDA", {}).get("trade", 0) > 3:
                        return stats
                    await asyncio.sleep(0.02)

            before = await asyncio.wait_for(nvda_traded(), 10)
            await request(ws, {"action": "subscribe", "trades": ["NVDA"]})
            first = await collect(ws, 1)
            return before, first, await fetch_stats(sim)

    before, first, after = asyncio.run(scenario())
    assert before["sent"] == {}
    assert set(before["happened"]["/v2/iex"]) >= {"AAPL", "MSFT", "NVDA"}, "the universe trades"
    assert first[0]["i"] > before["happened"]["/v2/iex"]["NVDA"]["trade"], "live, not replayed"
    happened = after["happened"]["/v2/iex"]["NVDA"]["trade"]
    assert after["sent"]["/v2/iex"]["NVDA"]["trade"] < happened, "happened and sent differ"
    iex_trades = sum(kinds["trade"] for kinds in after["happened"]["/v2/iex"].values())
    assert after["history"]["kept"]["/v2/iex"]["trade"]["events"] == iex_trades


def test_stopping_the_server_closes_clients_with_1001() -> None:
    async def scenario() -> int | None:
        async with running_sim(rate_per_symbol=100) as sim, session(sim) as ws:
            await request(ws, {"action": "subscribe", "trades": ["AAPL"]})
            await collect(ws, 2)
            await asyncio.wait_for(sim.stop(), 5)
            with pytest.raises(ConnectionClosed):
                await read_until_closed(ws)
            with pytest.raises(ConnectionRefusedError):
                await http_get(sim.port, "/healthz")  # the port is closed
            return ws.close_code

    assert asyncio.run(scenario()) == 1001


def test_no_key_id_or_secret_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    key, secret = "key-id-3f9a1c", "secret-77b2e0"

    async def scenario() -> None:
        async with running_sim() as sim:
            async with session(sim, auth={"action": "auth", "key": key, "secret": secret}) as ws:
                await request(ws, {"action": "subscribe", "trades": ["AAPL"]})
            headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}
            async with connect(sim.url("/v2/sip"), additional_headers=headers) as ws:
                await recv_json(ws)

    asyncio.run(scenario())
    # The sim's own lines; websockets' frame dumps are DEBUG, which __main__ never enables.
    logged = "\n".join(
        f"{r.getMessage()} {r.__dict__}"
        for r in caplog.records
        if not r.name.startswith(WEBSOCKETS_LOGGER.name)
    )
    assert "client_authenticated" in logged
    assert key not in logged
    assert secret not in logged
