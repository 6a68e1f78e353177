"""Helpers of the end-to-end tests: waiting, reading metrics, counting rows and sends."""

from __future__ import annotations

from collections import Counter
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


def trade_ids(dsn: str, symbol: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT trade_id FROM market_ticks"
            " WHERE symbol = %s AND kind = 'trade' ORDER BY trade_id",
            (symbol,),
        )
        return [int(r[0]) for r in rows]
