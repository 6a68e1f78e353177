"""A fixed firehose run for benchmarks: the simulator's markets, pre-generated, sent at a rate.

Generating the random walks costs the simulator ~30 µs per event, which at tens of thousands
of events per second would make it the bottleneck of any producer benchmark on a small
machine. So this mode generates the whole run first (the same ``SymbolMarket`` walks as the
live simulator), packs it into frames of many messages the way Alpaca does, and then only
writes frames, paced to ``--rate`` messages per second, to the first client that subscribes.

It speaks the part of Alpaca's stream protocol that alpaca-py needs (connected, auth,
subscription ack, msgpack frames), ``GET /next-run?rate=&count=`` sets the next
subscriber's run, and ``GET /stats`` says whether the run has finished and
exactly what was sent, so a benchmark waits on that condition rather than on a sleep::

    python -m tickpipe_market_sim.firehose --port 8799 --symbols 120 --messages 500000
    curl 'http://127.0.0.1:8799/next-run?rate=50000&count=300000'   # the next client's run
    # then a client connects to ws://127.0.0.1:8799/v2/sip (any path) and subscribes
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tickpipe_common.logging import configure_logging, get_logger
from tickpipe_market_sim.clock import EventClock
from tickpipe_market_sim.encoding import Encoding, encode_frame
from tickpipe_market_sim.market import SymbolMarket
from tickpipe_market_sim.protocol import Kind, Message
from tickpipe_market_sim.universe import AssetClass, build_feeds, profile_for

log = get_logger("tickpipe_market_sim.firehose")

KINDS = {"trades": Kind.TRADE, "quotes": Kind.QUOTE, "bars": Kind.BAR}
# A frame's bytes and how many messages of each wire type it holds.
Frame = tuple[bytes, Counter[str]]


def symbols(count: int) -> list[str]:
    return [f"S{i:04d}" for i in range(count)]


def generate_frames(
    names: Sequence[str],
    kinds: frozenset[Kind],
    total: int,
    per_frame: int,
    steps_per_bar: int,
    seed: int,
) -> list[Frame]:
    """``total`` events in frames of ``per_frame``, stepping every symbol in turn like the live
    hub; encoded as they are made, so memory holds bytes, not message objects."""
    feed = build_feeds(tuple(names), ())["/v2/sip"]
    clock = EventClock()
    markets = [
        SymbolMarket(
            profile=profile_for(name, AssetClass.STOCK),
            venues=feed.venues,
            seed=seed,
            clock=clock,
            steps_per_bar=steps_per_bar,
            bar_interval_ns=60 * 10**9,
            max_events=0,
        )
        for name in names
    ]
    frames: list[Frame] = []
    pending: list[Message] = []
    made = 0
    while made < total:
        for market in markets:
            # Only the subscribed kinds (a step may also close daily or updated bars).
            for event in market.advance(kinds):
                if event.kind in kinds and made < total:
                    pending.append(event.body)
                    made += 1
            if len(pending) >= per_frame:
                frames.append(_frame(pending))
                pending = []
    if pending:
        frames.append(_frame(pending))
    return frames


def _frame(bodies: list[Message]) -> Frame:
    packed = encode_frame(bodies, Encoding.MSGPACK)
    assert isinstance(packed, bytes)
    return packed, Counter(str(body["T"]) for body in bodies)


class Run:
    """One client's run: what it asked for and what it was sent."""

    def __init__(self, rate: float, count: int) -> None:
        self.rate = rate
        self.count = count
        self.sent: Counter[str] = Counter()
        self.frames = 0
        self.started = time.monotonic()
        self.finished: float | None = None

    def stats(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        total = sum(self.sent.values())
        return {
            "finished": self.finished is not None,
            "sent_total": total,
            "sent": dict(self.sent),
            "frames": self.frames,
            "seconds": elapsed,
            "rate": total / elapsed if elapsed > 0 else None,
            "target_rate": self.rate,
            "target_count": self.count,
        }


class Firehose:
    """Serves the pre-generated frames; each subscriber gets its own run from the start, at
    the rate and for the count of messages last set with ``GET /next-run?rate=&count=``."""

    def __init__(self, frames: list[Frame], default_rate: float) -> None:
        self._frames = frames
        self._next = (default_rate, sys.maxsize)
        self.last: Run | None = None

    def process_request(self, _conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/next-run":
            query = parse_qs(url.query)
            self._next = (float(query["rate"][0]), int(query["count"][0]))
            stats: dict[str, Any] = {"rate": self._next[0], "count": self._next[1]}
        elif url.path == "/stats":
            stats = self.last.stats() if self.last is not None else {"finished": False}
        else:
            return None
        body = json.dumps(stats).encode()
        headers = Headers([("Content-Type", "application/json"), ("Connection", "close")])
        headers["Content-Length"] = str(len(body))
        return Response(http.HTTPStatus.OK.value, "OK", headers, body)

    async def handle(self, ws: ServerConnection) -> None:
        rate, count = self._next
        pack = msgpack.packb
        await ws.send(pack([{"T": "success", "msg": "connected"}]))
        await ws.recv()  # auth: any key
        await ws.send(pack([{"T": "success", "msg": "authenticated"}]))
        request = msgpack.unpackb(await ws.recv())
        reply = {"T": "subscription"}
        reply.update({k: v for k, v in request.items() if k != "action"})
        await ws.send(pack([reply]))
        run = self.last = Run(rate, count)
        per_message = 1.0 / rate
        due = run.started
        sent = 0
        for frame, counts in self._frames:
            if sent >= count:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(frame)
            run.frames += 1
            run.sent.update(counts)
            size = sum(counts.values())
            sent += size
            due += per_message * size
        run.finished = time.monotonic()
        await ws.wait_closed()


async def _serve(args: argparse.Namespace) -> None:
    kinds = frozenset(KINDS[name] for name in args.channels.split(","))
    frames = generate_frames(
        symbols(args.symbols), kinds, args.messages, args.per_frame, args.steps_per_bar, args.seed
    )
    firehose = Firehose(frames, args.rate)
    async with serve(
        firehose.handle,
        args.host,
        args.port,
        process_request=firehose.process_request,
        compression=None,
        max_queue=None,
    ) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        messages = sum(sum(counts.values()) for _, counts in frames)
        log.info("firehose_ready", port=port, messages=messages)
        await asyncio.Future()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tickpipe-market-sim-firehose", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--symbols", type=int, default=120, help="symbols S0000… (default 120)")
    parser.add_argument("--channels", default="trades,quotes,bars")
    parser.add_argument("--rate", type=float, default=50_000, help="default messages per second")
    parser.add_argument("--messages", type=int, default=500_000, help="messages generated")
    parser.add_argument("--per-frame", type=int, default=200, help="messages per frame at most")
    parser.add_argument("--steps-per-bar", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    configure_logging("market-sim-firehose", "INFO", "json")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
