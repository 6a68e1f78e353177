"""A session's outbound queue and the /stats counts: framing, counting only what was sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry
from websockets.exceptions import ConnectionClosed

from tickpipe_market_sim.encoding import Encoding
from tickpipe_market_sim.protocol import Kind, connected, subscription
from tickpipe_market_sim.session import MAX_BATCH, Session
from tickpipe_market_sim.stats import SentStats, SimMetrics
from tickpipe_market_sim.universe import build_feeds

FEED = build_feeds(("AAPL",), ("BTC/USD",))["/v2/iex"]


class RecordingSink:
    """Stands in for the WebSocket; can fail from the n-th send on, like a dropped peer."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.frames: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self._fail_from = fail_from

    async def send(self, message: str | bytes) -> None:
        if self._fail_from is not None and len(self.frames) >= self._fail_from:
            raise ConnectionClosed(None, None)
        self.frames.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def decoded(self) -> list[list[dict[str, Any]]]:
        return [json.loads(frame) for frame in self.frames]


def make_session(
    sink: RecordingSink, queue_limit: int = 1000, conn_id: int = 1
) -> tuple[Session, SentStats, CollectorRegistry]:
    registry = CollectorRegistry()
    stats = SentStats(seed=5, metrics=SimMetrics(registry))
    stats.connection_opened(conn_id, FEED.path, "json")
    return Session(conn_id, FEED, Encoding.JSON, sink, stats, queue_limit), stats, registry


def trade(i: int, symbol: str = "AAPL") -> dict[str, Any]:
    return {"T": "t", "S": symbol, "i": i}


def test_control_messages_travel_alone_and_data_is_batched() -> None:
    sink = RecordingSink()
    session, stats, registry = make_session(sink)
    session.push_control(connected())
    for i in range(1, 4):
        session.push_data(Kind.TRADE, "AAPL", trade(i))
    session.push_control(subscription({"trades": ["AAPL"]}))
    session.push_data(Kind.QUOTE, "AAPL", {"T": "q", "S": "AAPL"})
    session.finish()
    asyncio.run(session.run_writer())

    frames = sink.decoded()
    assert [len(frame) for frame in frames] == [1, 3, 1, 1]
    assert frames[0] == [{"T": "success", "msg": "connected"}]
    assert [m["i"] for m in frames[1]] == [1, 2, 3]
    assert sink.closed is None, "finish() without a code leaves closing to the server"

    snapshot = stats.snapshot()
    assert snapshot["sent"] == {"/v2/iex": {"AAPL": {"quote": 1, "trade": 3}}}
    assert snapshot["totals"] == {
        "messages": 4,
        "by_kind": {"quote": 1, "trade": 3},
        "by_endpoint": {"/v2/iex": 4},
        "control_messages": 2,
        "frames": 4,
    }
    conn = snapshot["per_connection"]["1"]
    assert (conn["messages"], conn["control_messages"], conn["frames"]) == (4, 2, 4)
    assert conn["sent"] == {"AAPL": {"quote": 1, "trade": 3}}
    sample = registry.get_sample_value
    labels = {"endpoint": "/v2/iex", "kind": "trade"}
    assert sample("tickpipe_sim_messages_sent_total", labels) == 3
    assert sample("tickpipe_sim_frames_sent_total", {"endpoint": "/v2/iex"}) == 4
    assert sample("tickpipe_sim_control_messages_sent_total", {"endpoint": "/v2/iex"}) == 2


def test_frames_hold_at_most_max_batch_messages() -> None:
    sink = RecordingSink()
    session, stats, _ = make_session(sink)
    for i in range(2 * MAX_BATCH + 5):
        session.push_data(Kind.TRADE, "AAPL", trade(i))
    session.finish()
    asyncio.run(session.run_writer())
    assert [len(frame) for frame in sink.decoded()] == [MAX_BATCH, MAX_BATCH, 5]
    assert stats.snapshot()["totals"]["messages"] == 2 * MAX_BATCH + 5


def test_only_frames_whose_send_returned_are_counted() -> None:
    sink = RecordingSink(fail_from=1)
    session, stats, _ = make_session(sink)
    session.push_data(Kind.TRADE, "AAPL", trade(1))

    async def scenario() -> None:
        writer = asyncio.create_task(session.run_writer())
        await asyncio.sleep(0.01)  # the first frame goes out
        session.push_data(Kind.TRADE, "AAPL", trade(2))  # its send fails: peer gone
        session.push_data(Kind.QUOTE, "AAPL", {"T": "q", "S": "AAPL"})
        await asyncio.wait_for(writer, timeout=5)

    asyncio.run(scenario())
    assert len(sink.frames) == 1
    assert stats.snapshot()["sent"] == {"/v2/iex": {"AAPL": {"trade": 1}}}


def test_a_client_too_far_behind_is_dropped_with_407() -> None:
    sink = RecordingSink()
    session, stats, registry = make_session(sink, queue_limit=3)
    session.push_control(connected())
    assert all(session.push_data(Kind.TRADE, "AAPL", trade(i)) for i in range(3))
    assert not session.push_data(Kind.TRADE, "AAPL", trade(4))
    assert session.slow
    assert session.closing
    assert not session.push_data(Kind.TRADE, "AAPL", trade(5)), "nothing more is accepted"
    asyncio.run(session.run_writer())

    assert sink.decoded() == [
        [{"T": "success", "msg": "connected"}],
        [{"T": "error", "code": 407, "msg": "slow client"}],
    ]
    assert sink.closed == (1008, "slow client")
    assert stats.snapshot()["sent"] == {}, "the discarded backlog was never sent"
    assert registry.get_sample_value("tickpipe_sim_protocol_errors_total", {"code": "407"}) == 1


def test_connections_in_stats() -> None:
    registry = CollectorRegistry()
    stats = SentStats(seed=9, metrics=SimMetrics(registry))
    stats.connection_opened(1, "/v2/iex", "msgpack")
    stats.connection_opened(2, "/v2/iex", "json")
    stats.connection_opened(3, "/v1beta3/crypto/us", "msgpack")
    stats.connection_authenticated(1, "key")
    stats.frame_sent(1, [("AAPL", Kind.TRADE)])
    stats.frame_sent(2, [("AAPL", Kind.TRADE), ("MSFT", Kind.BAR)])
    stats.connection_closed(2)

    snapshot = stats.snapshot()
    assert snapshot["seed"] == 9
    assert snapshot["connections"] == {
        "open": 2,
        "total": 3,
        "open_by_endpoint": {"/v2/iex": 1, "/v1beta3/crypto/us": 1},
    }
    # Two connections receiving the same event count twice.
    assert snapshot["sent"] == {"/v2/iex": {"AAPL": {"trade": 2}, "MSFT": {"bar": 1}}}
    assert snapshot["per_connection"]["1"]["key"] == "key"
    assert snapshot["per_connection"]["2"]["open"] is False
    assert snapshot["per_connection"]["2"]["sent"] == {"AAPL": {"trade": 1}, "MSFT": {"bar": 1}}
    assert stats.messages_sent(2) == 2
    assert stats.open_connections() == 2
    assert registry.get_sample_value("tickpipe_sim_connections", {"endpoint": "/v2/iex"}) == 1
    json.dumps(snapshot)  # the /stats document must be JSON as it is
