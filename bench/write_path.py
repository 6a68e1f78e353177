"""Benchmark: the consumer's write path against what a hand-written script would do.

Side by side, in one run, on the same database and the same ticks:

- ``tickpipe``: the consumer's TickWriter — binary COPY into a staging table, then one
  ``INSERT … ON CONFLICT DO NOTHING`` per batch (BATCH_MAX_MESSAGES rows, one transaction);
- ``executemany``: psycopg's ``executemany`` of ``INSERT … ON CONFLICT DO NOTHING``, one
  transaction per batch (a careful hand-written script);
- ``row_by_row``: one ``INSERT`` per tick in autocommit (a naive script);
- ``tickpipe_replay``: the tickpipe path again over ticks already stored (a replay: every row
  is a duplicate and skipped).

Each method writes into a freshly truncated table, ``--runs`` times, alternating methods so
that machine noise spreads evenly; the table shows medians. Results also go to a JSON file.

    make bench                      # uses the local stack's database
    .venv/bin/python bench/write_path.py --dsn postgresql://... --ticks 20000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tickpipe_common.schema import Tick, decode_tick, encode_tick
from tickpipe_common.timestamps import now_ns, ns_to_datetime
from tickpipe_consumer.migrations import apply_migrations
from tickpipe_consumer.rows import COLUMN_NAMES, Row, tick_to_row
from tickpipe_consumer.writer import TickWriter

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "SPY", "BTC/USD", "ETH/USD", "SOL/USD")


def make_ticks(count: int) -> list[Tick]:
    start = now_ns() - count * 1_000_000
    return [
        Tick(
            kind="trade",
            asset_class="crypto" if "/" in SYMBOLS[i % len(SYMBOLS)] else "stock",
            symbol=SYMBOLS[i % len(SYMBOLS)],
            ts_ns=start + i * 1_000_000 + 123,
            received_ns=start + i * 1_000_000 + 5_000_123,
            feed="bench",
            price=100.0 + (i % 977) * 0.01,
            size=float(1 + i % 300),
            exchange="V",
            trade_id=i,
            conditions=("@",),
            tape="C",
        )
        for i in range(count)
    ]


Values = tuple[Any, ...]  # one row as a hand-written script passes it: Python values


def batches(rows: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def run_tickpipe(dsn: str, rows: Sequence[Row], batch: int) -> None:
    writer = TickWriter(dsn)
    try:
        for chunk in batches(rows, batch):
            writer.write(chunk)
    finally:
        writer.close()


_INSERT = sql.SQL("INSERT INTO market_ticks ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMN_NAMES),
    sql.SQL(", ").join(sql.Placeholder() * len(COLUMN_NAMES)),
)


def run_executemany(dsn: str, rows: Sequence[Values], batch: int) -> None:
    with psycopg.connect(dsn) as conn:
        for chunk in batches(rows, batch):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT, chunk)


def run_row_by_row(dsn: str, rows: Sequence[Values], _batch: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for row in rows:
            conn.execute(_INSERT, row)


def plan_methods(
    ticks: Sequence[Tick], rows: Sequence[Row]
) -> dict[str, tuple[Callable[[str, Any, int], None], Sequence[Any]]]:
    """Each method and what it writes: the consumer its encoded rows, the scripts values."""
    values = [values_of(t, "bench") for t in ticks]
    return {
        "tickpipe": (run_tickpipe, rows),
        "executemany": (run_executemany, values),
        "row_by_row": (run_row_by_row, values),
    }


def values_of(tick: Tick, producer: str) -> Values:
    """The row as query parameters, in column order (prepared untimed, like the COPY rows)."""
    computed: dict[str, Any] = {
        "tick_id": tick.tick_id,
        "ts": ns_to_datetime(tick.ts_ns),
        "received_at": ns_to_datetime(tick.received_ns),
        "kind": str(tick.kind),
        "asset_class": str(tick.asset_class),
        "producer": producer,
    }
    values = []
    for name in COLUMN_NAMES:
        value = computed[name] if name in computed else getattr(tick, name)
        if name == "conditions" and value is not None:
            value = list(value)
        elif name in ("bids", "asks") and value is not None:
            value = Jsonb([{"price": lv.price, "size": lv.size} for lv in value])
        values.append(value)
    return tuple(values)


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE market_ticks")


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM market_ticks").fetchone()
        return int(row[0]) if row else 0


def decode_rate(payloads: Sequence[bytes]) -> float:
    started = time.perf_counter()
    for payload in payloads:
        tick_to_row(decode_tick(payload), "bench")
    return len(payloads) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="admin DSN")
    parser.add_argument("--ticks", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000, help="rows per transaction")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-results/write_path.json"))
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set DATABASE_URL (make bench does, from the local stack)")

    name = f"tickpipe_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_migrations(conn)
        ticks = make_ticks(args.ticks)
        rows = [tick_to_row(t, "bench") for t in ticks]
        methods = plan_methods(ticks, rows)
        seconds: dict[str, list[float]] = {m: [] for m in [*methods, "tickpipe_replay"]}
        for _ in range(args.runs):
            for method, (run, prepared) in methods.items():
                truncate(dsn)
                started = time.perf_counter()
                run(dsn, prepared, args.batch)
                seconds[method].append(time.perf_counter() - started)
                stored = count_rows(dsn)
                if stored != len(rows):
                    raise SystemExit(f"{method} stored {stored} rows, expected {len(rows)}")
            # The table now holds every tick: writing them again is a pure replay.
            started = time.perf_counter()
            run_tickpipe(dsn, rows, args.batch)
            seconds["tickpipe_replay"].append(time.perf_counter() - started)
            if count_rows(dsn) != len(rows):
                raise SystemExit("the replay changed the table")
        payloads = [encode_tick(t) for t in ticks]
        decode = statistics.median(decode_rate(payloads) for _ in range(args.runs))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    base = statistics.median(seconds["tickpipe"])
    results = []
    print(f"write path: {args.ticks} trades, batches of {args.batch}, median of {args.runs} runs")
    print(f"{'method':<18}{'median s':>10}{'rows/s':>12}{'vs tickpipe':>13}")
    for method, values in seconds.items():
        median = statistics.median(values)
        rate = args.ticks / median
        results.append(
            {"method": method, "median_seconds": median, "rows_per_second": rate,
             "slowdown_vs_tickpipe": median / base, "runs_seconds": values}
        )  # fmt: skip
        print(f"{method:<18}{median:>10.3f}{rate:>12,.0f}{median / base:>12.1f}x")
    print(f"decode+validate+map (no database): {decode:,.0f} messages/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "write_path",
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "ticks": args.ticks,
                "batch": args.batch,
                "runs": args.runs,
                "results": results,
                "decode_messages_per_second": decode,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
