"""What the simulator actually wrote to its clients, for /stats and /metrics.

Counts go up only after a frame's ``send`` returned (the bytes are with the operating
system), once per connection, so tests can reconcile exactly what reached each client
with what ended up downstream. /stats breaks them down by endpoint, symbol and kind;
Prometheus gets the same counts with bounded labels (endpoint, kind — never symbol).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from tickpipe_common.service_metrics import register_service_info
from tickpipe_market_sim.protocol import Kind

# Closed connections are remembered for /stats, up to this many (oldest forgotten first).
MAX_CLOSED_CONNECTIONS = 1000


class SimMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_service_info("market-sim", registry)
        self.messages_sent = PromCounter(
            "tickpipe_sim_messages_sent",
            "Market-data messages written to WebSocket clients (one per client).",
            ["endpoint", "kind"],
            registry=registry,
        )
        self.control_sent = PromCounter(
            "tickpipe_sim_control_messages_sent",
            "Control messages (success, subscription, error) written to clients.",
            ["endpoint"],
            registry=registry,
        )
        self.frames_sent = PromCounter(
            "tickpipe_sim_frames_sent",
            "WebSocket frames written to clients.",
            ["endpoint"],
            registry=registry,
        )
        self.events_generated = PromCounter(
            "tickpipe_sim_events_generated",
            "Events the simulated markets produced (before fan-out to clients).",
            ["endpoint", "kind"],
            registry=registry,
        )
        self.protocol_errors = PromCounter(
            "tickpipe_sim_protocol_errors",
            "Alpaca protocol errors sent to clients, by code.",
            ["code"],
            registry=registry,
        )
        self.connections = Gauge(
            "tickpipe_sim_connections",
            "Open WebSocket connections.",
            ["endpoint"],
            registry=registry,
        )
        self.connections_opened = PromCounter(
            "tickpipe_sim_connections_opened",
            "WebSocket connections accepted.",
            ["endpoint"],
            registry=registry,
        )


@dataclass
class _ConnectionStats:
    endpoint: str
    encoding: str
    opened_at: float
    key: str | None = None
    closed_at: float | None = None
    sent: dict[str, Counter[Kind]] = field(default_factory=dict)
    messages: int = 0
    control: int = 0
    frames: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "encoding": self.encoding,
            "key": self.key,
            "open": self.closed_at is None,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "messages": self.messages,
            "control_messages": self.control,
            "frames": self.frames,
            "sent": _nested(self.sent),
        }


class SentStats:
    def __init__(
        self, seed: int, metrics: SimMetrics, clock: Callable[[], float] = time.time
    ) -> None:
        self._seed = seed
        self._metrics = metrics
        self._clock = clock
        self._started = clock()
        self._sent: dict[str, dict[str, Counter[Kind]]] = {}
        self._control: Counter[str] = Counter()
        self._frames: Counter[str] = Counter()
        self._connections: OrderedDict[int, _ConnectionStats] = OrderedDict()
        self._opened_total = 0

    # --- connections ------------------------------------------------------------------

    def connection_opened(self, conn_id: int, endpoint: str, encoding: str) -> None:
        self._connections[conn_id] = _ConnectionStats(endpoint, encoding, self._clock())
        self._opened_total += 1
        self._metrics.connections.labels(endpoint).inc()
        self._metrics.connections_opened.labels(endpoint).inc()

    def connection_authenticated(self, conn_id: int, key: str) -> None:
        self._connections[conn_id].key = key

    def connection_closed(self, conn_id: int) -> None:
        conn = self._connections[conn_id]
        conn.closed_at = self._clock()
        self._metrics.connections.labels(conn.endpoint).dec()
        closed = [cid for cid, c in self._connections.items() if c.closed_at is not None]
        for cid in closed[: max(0, len(closed) - MAX_CLOSED_CONNECTIONS)]:
            del self._connections[cid]

    def open_connections(self) -> int:
        return sum(1 for c in self._connections.values() if c.closed_at is None)

    def messages_sent(self, conn_id: int) -> int:
        conn = self._connections.get(conn_id)
        return conn.messages if conn is not None else 0

    # --- what was sent ----------------------------------------------------------------

    def frame_sent(self, conn_id: int, data: Iterable[tuple[str, Kind]], control: int = 0) -> None:
        """One frame went out: its market-data messages as (symbol, kind) pairs, plus the
        number of control messages in it."""
        conn = self._connections[conn_id]
        endpoint = conn.endpoint
        kinds: Counter[Kind] = Counter()
        for symbol, kind in data:
            self._sent.setdefault(endpoint, {}).setdefault(symbol, Counter())[kind] += 1
            conn.sent.setdefault(symbol, Counter())[kind] += 1
            kinds[kind] += 1
        for kind, n in kinds.items():
            self._metrics.messages_sent.labels(endpoint, kind.value).inc(n)
        conn.messages += sum(kinds.values())
        conn.frames += 1
        self._frames[endpoint] += 1
        self._metrics.frames_sent.labels(endpoint).inc()
        if control:
            conn.control += control
            self._control[endpoint] += control
            self._metrics.control_sent.labels(endpoint).inc(control)

    def error_sent(self, code: int) -> None:
        self._metrics.protocol_errors.labels(str(code)).inc()

    def generated(self, endpoint: str, kind: Kind, n: int = 1) -> None:
        self._metrics.events_generated.labels(endpoint, kind.value).inc(n)

    # --- the /stats document ------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        by_kind: Counter[Kind] = Counter()
        by_endpoint: dict[str, int] = {}
        for endpoint, symbols in self._sent.items():
            total = 0
            for kinds in symbols.values():
                by_kind.update(kinds)
                total += sum(kinds.values())
            by_endpoint[endpoint] = total
        open_by_endpoint: Counter[str] = Counter(
            c.endpoint for c in self._connections.values() if c.closed_at is None
        )
        return {
            "seed": self._seed,
            "uptime_seconds": round(self._clock() - self._started, 3),
            "connections": {
                "open": sum(open_by_endpoint.values()),
                "total": self._opened_total,
                "open_by_endpoint": dict(open_by_endpoint),
            },
            "sent": {endpoint: _nested(symbols) for endpoint, symbols in self._sent.items()},
            "totals": {
                "messages": sum(by_kind.values()),
                "by_kind": {kind.value: n for kind, n in sorted(by_kind.items())},
                "by_endpoint": by_endpoint,
                "control_messages": sum(self._control.values()),
                "frames": sum(self._frames.values()),
            },
            "per_connection": {str(cid): conn.as_json() for cid, conn in self._connections.items()},
        }


def _nested(by_symbol: dict[str, Counter[Kind]]) -> dict[str, dict[str, int]]:
    return {
        symbol: {kind.value: n for kind, n in sorted(kinds.items())}
        for symbol, kinds in by_symbol.items()
    }
