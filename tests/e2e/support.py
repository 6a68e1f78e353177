"""Helpers of the end-to-end tests: waiting, reading metrics, counting rows and sends."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

import psycopg

from tests.processes import http_get


def metric_sum(port: int, name: str) -> float:
    """Sum of every sample of one metric on a service's /metrics."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def db_counts(dsn: str) -> Counter[tuple[str, str]]:
    """Rows of market_ticks per (symbol, kind)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT symbol, kind, count(*) FROM market_ticks GROUP BY 1, 2")
        return Counter({(symbol, kind): n for symbol, kind, n in rows})


def sim_sent(stats: dict[str, Any]) -> Counter[tuple[str, str]]:
    """What the simulator's /stats says it sent, per (symbol, kind), over every endpoint."""
    sent: Counter[tuple[str, str]] = Counter()
    for per_symbol in stats["sent"].values():
        for symbol, kinds in per_symbol.items():
            for kind, n in kinds.items():
                sent[(symbol, kind)] += n
    return sent


def sim_run_over(stats: dict[str, Any], subscribed: Collection[str] = ()) -> bool:
    """A fixed run (``SIM_MAX_EVENTS_PER_SYMBOL``) is over, by one read of /stats: it sent
    something, says it will generate nothing more (``finished``: the last bars closed, late
    prints out), and has sent every event it generated of the ``subscribed`` kinds and of any
    kind it sent (a market also makes daily bars nobody asked for). From then on ``sent``
    no longer changes."""
    sent = sim_sent(stats)
    kinds = {*subscribed, *(kind for _, kind in sent)}
    generated = {
        (symbol, kind): n
        for per_symbol in stats["generated"].values()
        for symbol, per_kind in per_symbol.items()
        for kind, n in per_kind.items()
        if kind in kinds
    }
    return (
        bool(sent)
        and bool(stats["finished"])
        and all(sent[key] >= n for key, n in generated.items())
    )


def trade_ids(dsn: str, symbol: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT trade_id FROM market_ticks"
            " WHERE symbol = %s AND kind = 'trade' ORDER BY trade_id",
            (symbol,),
        )
        return [int(r[0]) for r in rows]
