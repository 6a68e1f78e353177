"""Benchmark: the consumer end to end — Kafka topic → market_ticks — against its baselines.

One run preloads ``--ticks`` ticks (trades, quotes, bars and order books over 30 stocks and
10 crypto pairs, encoded with the producers' own ``encode_tick``) into a fresh 6-partition
topic, then drains that same topic, in turn, with:

- ``tickpipe``: the real consumer service, ``python -m tickpipe_consumer``, as a process;
- ``tickpipe_x2``: two such processes in one consumer group (3 partitions each): scale-out;
- ``baseline``: the same consumer service from another git ref (``--baseline``, default
  ``main``), exported with ``git archive`` and run from there in the same virtualenv: this
  tree's consumer and that ref's side by side, on the same ticks, in the same rounds;
- ``careful``: a careful hand-written consumer (confluent-kafka, ``json.loads``, one
  ``executemany`` of ``INSERT … ON CONFLICT DO NOTHING`` per batch of 5,000, offsets committed
  after the database), as a process;
- ``seed_style``: what the seed's script does (kafka-python, auto-committed offsets, one
  autocommit ``INSERT`` per message), as a process; it is slow, so it drains only the first
  ``--seed-ticks`` ticks and its rate is over those;
- ``copy_ceiling``: no Kafka, no decoding: binary ``COPY`` of rows prepared beforehand
  (untimed; the consumer's own binary encoding, so no Python work per row is left) into the
  same table with the same indexes, in transactions of 5,000 rows: what PostgreSQL itself
  can take on this machine, the ceiling any consumer is measured against.

Each method starts on a truncated table; the methods alternate within each of ``--runs``
rounds so that machine noise spreads over all of them, and the table shows medians. For each:
the time from start until the table holds every tick, the rate between 10% and 90% of them
(start-up and group join left out), and the CPU seconds of the consumer process(es),
PostgreSQL (all its processes) and Kafka during the drain, with the consumer's peak RSS.

    make bench-consumer                       # on the local stack (make stack-up)
    .venv/bin/python bench/drain.py --ticks 300000 --runs 3 --schema-version 2
    .venv/bin/python bench/drain.py --methods tickpipe,baseline,copy_ceiling --runs 5

Results: a table on stdout and ``bench/results/drain.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from git_ref import export_ref
from kafka import KafkaConsumer  # type: ignore[import-untyped]  # kafka-python, like the seed
from psycopg import sql

from tickpipe_common.schema import Tick, decode_tick, encode_tick, kafka_headers
from tickpipe_common.timestamps import now_ns
from tickpipe_consumer.migrations import apply_migrations
from tickpipe_consumer.rows import COLUMN_NAMES, Row, tick_to_row
from tickpipe_consumer.writer import copy_data

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 6
BATCH = 5_000
STOCKS = [
    "AAPL",
    "MSFT",
    "NVDA",
    "AMZN",
    "GOOGL",
    "META",
    "TSLA",
    "SPY",
    "QQQ",
    "AMD",
    "NFLX",
    "INTC",
    "AVGO",
    "ORCL",
    "CRM",
    "ADBE",
    "CSCO",
    "PEP",
    "KO",
    "JPM",
    "BAC",
    "WMT",
    "DIS",
    "XOM",
    "CVX",
    "PFE",
    "MRK",
    "T",
    "VZ",
    "IWM",
]
CRYPTO = "BTC/USD ETH/USD SOL/USD LTC/USD DOGE/USD AVAX/USD LINK/USD DOT/USD UNI/USD XRP/USD"
CRYPTO_PAIRS = CRYPTO.split()
_POLL_SECONDS = 0.2


# -- the ticks --------------------------------------------------------------------------------


def make_ticks(count: int, seed: int = 7) -> list[Tick]:
    """A day-like mix: 50% quotes, 40% trades, 6% order books, 4% bars, in time order."""
    rng = random.Random(seed)
    start = now_ns() - count * 50_000 - 3_600 * 10**9
    ticks = []
    for i in range(count):
        crypto = rng.random() < 0.25
        symbol = rng.choice(CRYPTO_PAIRS if crypto else STOCKS)
        base: dict[str, Any] = {
            "asset_class": "crypto" if crypto else "stock",
            "symbol": symbol,
            "ts_ns": start + i * 50_000 + rng.randrange(1000),
            "received_ns": start + i * 50_000 + 2_000_000,
            "feed": "us" if crypto else "iex",
        }
        price = round(100 + rng.random() * 50, 2)
        roll = rng.random()
        if roll < 0.5:
            tick = Tick(
                kind="quote",
                bid_price=price,
                bid_size=float(rng.randrange(1, 500)),
                ask_price=price + 0.01,
                ask_size=float(rng.randrange(1, 500)),
                bid_exchange=None if crypto else "V",
                ask_exchange=None if crypto else "V",
                conditions=None if crypto else ("R",),
                tape=None if crypto else "C",
                **base,
            )
        elif roll < 0.9:
            tick = Tick(
                kind="trade",
                price=price,
                size=float(rng.randrange(1, 1000)) / (1000 if crypto else 1),
                exchange="CBSE" if crypto else "V",
                trade_id=i,
                conditions=None if crypto else ("@",),
                tape=None if crypto else "C",
                taker_side=rng.choice("BS") if crypto else None,
                **base,
            )
        elif roll < 0.96 and crypto:
            levels = [{"price": price - k * 0.5, "size": rng.random()} for k in range(5)]
            tick = Tick(kind="orderbook", bids=levels, asks=levels[::-1], reset=False, **base)
        else:
            tick = Tick(
                kind="updated_bar",
                open=price,
                high=price + 1,
                low=price - 1,
                close=price + 0.5,
                volume=float(rng.randrange(100, 10_000)),
                vwap=price,
                trade_count=rng.randrange(1, 100),
                **base,
            )
        ticks.append(tick)
    return ticks


def preload(bootstrap: str, topic: str, ticks: Sequence[Tick], version: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    headers = kafka_headers("bench", version)
    for tick in ticks:
        producer.produce(topic, encode_tick(tick, version), tick.symbol.encode(), headers=headers)
        producer.poll(0)
    if producer.flush(60):
        raise SystemExit("preload: Kafka did not take every tick")


# -- measuring --------------------------------------------------------------------------------


def _cpu_of(pid: int) -> float:
    """utime + stime (s) of a live process, plus its reaped children's (cutime + cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == parent:
            found.append(int(entry.name))
    return found


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Cpu:
    """CPU seconds of PostgreSQL (postmaster and every backend) and Kafka."""

    def __init__(self, run_dir: Path) -> None:
        self._postmaster = _pid_file(run_dir / "postgres" / "data" / "postmaster.pid")
        self._kafka = _pid_file(run_dir / "pids" / "kafka.pid")

    def postgres(self) -> float:
        if self._postmaster is None:
            return float("nan")
        # Reaped backends are in the postmaster's cutime; live ones are read directly.
        return _cpu_of(self._postmaster) + sum(
            _cpu_of(child) for child in _children(self._postmaster)
        )

    def kafka(self) -> float:
        return float("nan") if self._kafka is None else _cpu_of(self._kafka)


def _pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Drain:
    method: str
    ticks: int
    seconds: float  # start → table holds every tick
    rate_10_90: float  # ticks/s between 10% and 90% of them
    consumer_cpu: float
    postgres_cpu: float
    kafka_cpu: float
    peak_rss_mib: float
    progress: list[tuple[float, int]] = field(default_factory=list, repr=False)


def wait_for_rows(
    conn: psycopg.Connection[Any],
    expected: int,
    started: float,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> list[tuple[float, int]]:
    progress: list[tuple[float, int]] = []
    while True:
        row = conn.execute("SELECT count(*) FROM market_ticks").fetchone()
        count = int(row[0]) if row else 0
        progress.append((time.perf_counter() - started, count))
        if count >= expected:
            return progress
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {count} of {expected} rows after {timeout:.0f}s")
        if not alive():
            raise SystemExit(f"the consumer exited with {count} of {expected} rows stored")
        time.sleep(_POLL_SECONDS)


def rate_between(progress: list[tuple[float, int]], expected: int) -> float:
    def first_at(share: float) -> float:
        return next(t for t, n in progress if n >= share * expected)

    t10, t90 = first_at(0.1), first_at(0.9)
    if t90 <= t10:  # the whole middle landed between two polls
        return float("nan")
    return 0.8 * expected / (t90 - t10)


# -- the methods ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    bootstrap: str
    topic: str
    dsn: str
    cpu: Cpu
    timeout: float
    baseline_path: str | None = None  # PYTHONPATH of the baseline ref's consumer


_BASELINE_SOURCES = ("libs/common/src", "services/consumer/src")


def drain_processes(
    setup: Setup, method: str, commands: list[list[str]], env: dict[str, str], expected: int
) -> Drain:
    with psycopg.connect(setup.dsn, autocommit=True) as conn:
        pg0, kafka0 = setup.cpu.postgres(), setup.cpu.kafka()
        started = time.perf_counter()
        # Logs to a file, never a pipe nobody reads (a full pipe would stall the consumer).
        log_path = REPO / "bench" / "results" / f"{method}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        procs = [
            # S603: the commands are this script's own, built above from sys.executable
            subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)  # noqa: S603
            for command in commands
        ]
        try:
            progress = wait_for_rows(
                conn,
                expected,
                started,
                setup.timeout,
                alive=lambda: all(p.poll() is None for p in procs),
            )
            seconds = progress[-1][0]
            consumer_cpu = sum(_cpu_of(p.pid) for p in procs)
            rss = max(_peak_rss_mib(p.pid) for p in procs)
            pg, kafka = setup.cpu.postgres() - pg0, setup.cpu.kafka() - kafka0
        except SystemExit:
            for p in procs:
                p.kill()
            sys.stderr.write(f"the consumer's output is in {log_path}\n")
            raise
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log_file.close()
    return Drain(
        method,
        expected,
        seconds,
        rate_between(progress, expected),
        consumer_cpu,
        pg,
        kafka,
        rss,
        progress,
    )


def consumer_env(setup: Setup, group: str) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": setup.bootstrap,
        "KAFKA_TOPIC": setup.topic,
        "KAFKA_GROUP_ID": group,
        "DATABASE_URL": setup.dsn,
        "APPLY_MIGRATIONS": "false",
        "HTTP_PORT": "0",
        "HTTP_HOST": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
    }


def run_tickpipe(setup: Setup, expected: int, replicas: int, baseline: bool = False) -> Drain:
    command = [sys.executable, "-m", "tickpipe_consumer", "run"]
    group = f"bench-tickpipe-{uuid.uuid4().hex[:8]}"
    name = "tickpipe" if replicas == 1 else f"tickpipe_x{replicas}"
    env = consumer_env(setup, group)
    if baseline:
        if setup.baseline_path is None:  # pragma: no cover - main() exports it first
            raise SystemExit("the baseline method needs the baseline ref exported")
        name = "baseline"
        # Before the virtualenv's editable installs of this tree on sys.path.
        env["PYTHONPATH"] = setup.baseline_path
    return drain_processes(setup, name, [command] * replicas, env, expected)


def run_baseline(setup: Setup, method: str, expected: int) -> Drain:
    command = [sys.executable, str(Path(__file__)), f"_{method}", "--limit", str(expected)]
    env = consumer_env(setup, f"bench-{method}-{uuid.uuid4().hex[:8]}")
    return drain_processes(setup, method, [command], env, expected)


def run_copy_ceiling(setup: Setup, rows: Sequence[Row]) -> Drain:
    copy_sql = sql.SQL("COPY market_ticks ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMN_NAMES)
    )
    with psycopg.connect(setup.dsn, autocommit=True) as conn:
        pg0, kafka0 = setup.cpu.postgres(), setup.cpu.kafka()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        progress: list[tuple[float, int]] = [(0.0, 0)]
        for i in range(0, len(rows), BATCH):
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                copy.write(copy_data(rows[i : i + BATCH]))
            progress.append((time.perf_counter() - started, min(len(rows), i + BATCH)))
        seconds = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        pg, kafka = setup.cpu.postgres() - pg0, setup.cpu.kafka() - kafka0
    own = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return Drain(
        "copy_ceiling",
        len(rows),
        seconds,
        rate_between(progress, len(rows)),
        own,
        pg,
        kafka,
        float("nan"),
        progress,
    )


# -- the baselines' own processes --------------------------------------------------------------

_BASELINE_INSERT = sql.SQL("INSERT INTO market_ticks ({}) VALUES ({}) ON CONFLICT DO NOTHING")


def _insert_sql() -> sql.Composed:
    return _BASELINE_INSERT.format(
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMN_NAMES),
        sql.SQL(", ").join(sql.Placeholder() * len(COLUMN_NAMES)),
    )


def _row_from_json(value: bytes, producer: str) -> tuple[Any, ...]:
    """What a hand-written consumer does: json.loads, and the fields into the columns."""
    doc = json.loads(value)
    values: list[Any] = []
    for name in COLUMN_NAMES:
        if name == "tick_id":
            values.append(doc.get("tick_id") or str(decode_tick(value).tick_id))
        elif name == "ts":
            values.append(doc["ts"][:26] + "Z")
        elif name == "received_at":
            values.append(doc["received_at"][:26] + "Z")
        elif name == "ts_ns":
            values.append(_ns(doc["ts"]))
        elif name in ("bids", "asks"):
            values.append(None if doc.get(name) is None else json.dumps(doc[name]))
        elif name == "producer":
            values.append(producer)
        else:
            v = doc.get(name)
            values.append(list(v) if isinstance(v, list) else v)
    return tuple(values)


def _ns(text: str) -> int:
    whole = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int(whole.timestamp()) * 1_000_000_000 + int(text[20:29])


def seed_style_main(limit: int) -> None:
    consumer = KafkaConsumer(
        os.environ["KAFKA_TOPIC"],
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=os.environ["KAFKA_GROUP_ID"],
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    insert = _insert_sql()
    done = 0
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        for message in consumer:
            conn.execute(insert, _row_from_json(message.value, "seed"))
            done += 1
            if done >= limit:
                break
        signal.pause()  # until the benchmark has counted the rows and sends SIGTERM


def careful_main(limit: int) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            "group.id": os.environ["KAFKA_GROUP_ID"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([os.environ["KAFKA_TOPIC"]])
    insert = _insert_sql()
    done = 0
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        while done < limit:
            messages = [m for m in consumer.consume(BATCH, 0.5) if m.error() is None]
            if not messages:
                continue
            rows = [_row_from_json(m.value() or b"", "careful") for m in messages]
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(insert, rows)
            consumer.commit(asynchronous=False)
            done += len(rows)
        signal.pause()


# -- the run ----------------------------------------------------------------------------------


def create_database(admin_dsn: str) -> tuple[str, str]:
    name = f"tickpipe_drain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_migrations(conn)
    return name, dsn


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE market_ticks")
        conn.execute("VACUUM ANALYZE market_ticks")


def summarise(drains: dict[str, list[Drain]]) -> list[dict[str, Any]]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = []
    ceiling = med([d.rate_10_90 for d in drains.get("copy_ceiling", [])] or [float("nan")])
    seed = med([d.rate_10_90 for d in drains.get("seed_style", [])] or [float("nan")])
    for method, runs in drains.items():
        rate = med([d.rate_10_90 for d in runs])
        rows.append(
            {
                "method": method,
                "ticks": runs[0].ticks,
                "runs": len(runs),
                "median_seconds": med([d.seconds for d in runs]),
                "median_rate_10_90": rate,
                "share_of_copy_ceiling": rate / ceiling,
                "times_seed_style": rate / seed,
                "median_consumer_cpu_s": med([d.consumer_cpu for d in runs]),
                "median_postgres_cpu_s": med([d.postgres_cpu for d in runs]),
                "median_kafka_cpu_s": med([d.kafka_cpu for d in runs]),
                "median_peak_rss_mib": med([d.peak_rss_mib for d in runs]),
                "rates_10_90": [d.rate_10_90 for d in runs],
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    print(
        f"{'method':<14}{'ticks':>8}{'drain s':>9}{'ticks/s 10-90%':>16}{'of COPY':>9}"
        f"{'x seed':>8}{'cons CPU s':>11}{'PG CPU s':>10}{'Kafka CPU s':>12}{'peak RSS':>10}"
    )
    for r in rows:
        print(
            f"{r['method']:<14}{r['ticks']:>8}{r['median_seconds']:>9.2f}"
            f"{r['median_rate_10_90']:>16,.0f}{r['share_of_copy_ceiling']:>8.0%}"
            f"{_times(r['times_seed_style']):>8}{r['median_consumer_cpu_s']:>11.2f}"
            f"{r['median_postgres_cpu_s']:>10.2f}{r['median_kafka_cpu_s']:>12.2f}"
            f"{_mib(r['median_peak_rss_mib']):>10}"
        )


def _times(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}x"  # no seed_style run: no ratio


def _mib(value: float) -> str:
    # The COPY ceiling runs inside this process: it has no consumer RSS of its own.
    return "-" if math.isnan(value) else f"{value:.0f}Mi"


def run_rounds(
    setup: Setup, methods: list[str], runs: int, rows: Sequence[Row], seed_ticks: int
) -> dict[str, list[Drain]]:
    """Every method once per round, in order, each on a truncated table."""
    drains: dict[str, list[Drain]] = {m: [] for m in methods}
    for round_ in range(runs):
        for method in methods:
            truncate(setup.dsn)
            if method == "copy_ceiling":
                drain = run_copy_ceiling(setup, rows)
            elif method == "tickpipe":
                drain = run_tickpipe(setup, len(rows), 1)
            elif method == "tickpipe_x2":
                drain = run_tickpipe(setup, len(rows), 2)
            elif method == "baseline":
                drain = run_tickpipe(setup, len(rows), 1, baseline=True)
            elif method in ("careful", "seed_style"):
                limit = len(rows) if method == "careful" else seed_ticks
                drain = run_baseline(setup, method, limit)
            else:
                raise SystemExit(f"unknown method {method}")
            drains[method].append(drain)
            print(
                f"  round {round_ + 1}/{runs} {method:<13} {drain.ticks:>8} ticks "
                f"{drain.seconds:7.2f}s  {drain.rate_10_90:>10,.0f}/s (10-90%)",
                flush=True,
            )
    return drains


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="baseline")
    for name in ("_seed_style", "_careful"):
        child = sub.add_parser(name, help=argparse.SUPPRESS)
        child.add_argument("--limit", type=int, required=True)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="admin DSN")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--ticks", type=int, default=300_000)
    parser.add_argument("--seed-ticks", type=int, default=20_000, help="seed_style drains these")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--schema-version", type=int, default=2, choices=(1, 2))
    parser.add_argument(
        "--methods",
        default="tickpipe,copy_ceiling,careful,seed_style,tickpipe_x2",
        help="comma-separated, in the order each round runs them; `baseline` is the consumer "
        "of the --baseline ref",
    )
    parser.add_argument(
        "--baseline",
        dest="baseline_ref",  # "baseline" is the dest of the baselines' own subcommands
        default="main",
        help="git ref of the `baseline` method",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per drain, seconds")
    parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("TICKPIPE_RUN_DIR", REPO / ".run"))
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "drain.json")
    args = parser.parse_args(argv)
    if args.baseline == "_seed_style":
        seed_style_main(args.limit)
        return 0
    if args.baseline == "_careful":
        careful_main(args.limit)
        return 0
    if not args.dsn or not args.bootstrap:
        parser.error("set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS (make bench-consumer does)")
    methods = args.methods.split(",")

    started_at = datetime.now(UTC)
    ticks = make_ticks(args.ticks)
    topic = f"bench_drain_{uuid.uuid4().hex[:8]}"
    print(f"preloading {len(ticks):,} ticks (schema version {args.schema_version}) into {topic}")
    preload(args.bootstrap, topic, ticks, args.schema_version)
    rows = [tick_to_row(t, "bench") for t in ticks]  # for the COPY ceiling, untimed
    name, dsn = create_database(args.dsn)
    with tempfile.TemporaryDirectory(prefix="tickpipe-bench-drain-") as tmp:
        baseline_path = (
            export_ref(args.baseline_ref, _BASELINE_SOURCES, Path(tmp))
            if "baseline" in methods
            else None
        )
        setup = Setup(args.bootstrap, topic, dsn, Cpu(args.run_dir), args.timeout, baseline_path)
        try:
            drains = run_rounds(setup, methods, args.runs, rows, min(args.seed_ticks, len(ticks)))
        finally:
            drop_database(args.dsn, name)
            AdminClient({"bootstrap.servers": args.bootstrap}).delete_topics([topic])

    summary = summarise(drains)
    print()
    print_table(
        summary,
        f"consumer drain: {len(ticks):,} preloaded ticks (schema v{args.schema_version}), "
        f"{PARTITIONS} partitions, medians of {args.runs} alternating runs, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
        + (f"; baseline = the consumer of {args.baseline_ref}" if "baseline" in methods else ""),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "drain",
                "at": started_at.isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_end": os.getloadavg(),
                },
                "ticks": len(ticks),
                "schema_version": args.schema_version,
                "baseline_ref": args.baseline_ref if "baseline" in methods else None,
                "partitions": PARTITIONS,
                "runs": args.runs,
                "results": summary,
                "drains": {m: [asdict(d) for d in ds] for m, ds in drains.items()},
            },
            indent=2,
        )
    )
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
