"""A disconnect loses nothing: both producers stream every tick from a simulated *market* (it
trades whether anyone listens or not) while the simulator does to them what real streams do —
three abrupt drops, a mute past STALE_AFTER_SECONDS, a 407 to a backlogged client, a half-dead
window in which reconnects get 406 — and one producer is SIGKILLed and restarted. Afterwards
the table holds exactly what the market *happened* to do for the subscribed symbols and
channels over the run, fetched from the simulator's own history: every trade and quote, none
twice, trade ids contiguous, and every one-minute bar.

Bars: a bar the stream delivered is stored as streamed; about one in five later gets a late
print (an updated bar, not subscribed here) that the history has applied. So a stored bar
equals the history's, or — streamed before its late print — the same bar less that one print
(same open, high, low and close, one trade and some volume fewer). A bar the producer missed
comes from the history, late print included.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.support import metric_sum
from tests.processes import Service, free_port, http_get, http_json, wait_for
from tickpipe_common.timestamps import format_rfc3339_ns, parse_rfc3339_ns

STOCKS = ("AAPL", "MSFT")
CRYPTO = ("BTC/USD", "ETH/USD")
STALE_AFTER = 2.0
BAR_NS = 60 * 10**9
KEY = {"APCA-API-KEY-ID": "tickpipe-sim", "APCA-API-SECRET-KEY": "tickpipe-sim"}


def _metric(port: int, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if not line.startswith(name) or line[len(name)] not in " {":
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Run:
    """The simulator, the consumer and the two producers of one run."""

    def __init__(self, kafka: str, topic: str, dsn: str, tmp: Path) -> None:
        self.sim_port = free_port()
        self.ports = {"stocks": free_port(), "crypto": free_port(), "consumer": free_port()}
        self.dsn = dsn
        self.tmp = tmp
        kafka_env = {"KAFKA_BOOTSTRAP_SERVERS": kafka, "KAFKA_TOPIC": topic}
        self.sim = Service(
            "market-sim",
            "tickpipe_market_sim",
            {
                "SIM_HOST": "127.0.0.1",
                "SIM_PORT": str(self.sim_port),
                "SIM_TRADING": "always",
                "SIM_ADMIN": "true",
                "SIM_STOCK_SYMBOLS": ",".join(STOCKS),
                "SIM_CRYPTO_SYMBOLS": ",".join(CRYPTO),
                "SIM_RATE_PER_SYMBOL": "10",
                "SIM_BAR_INTERVAL": "60",  # the history's 1Min bars are the streamed bars
                "SIM_HISTORY_SECONDS": "1200",
                "SIM_HISTORY_EVENTS": "0",
                "SIM_MAX_CONNECTIONS": "1",  # one per key and feed, as on Alpaca
            },
            tmp / "sim.log",
        )
        self.consumer = Service(
            "consumer",
            "tickpipe_consumer",
            {
                **kafka_env,
                "DATABASE_URL": dsn,
                "KAFKA_GROUP_ID": f"gaps-{uuid.uuid4().hex[:8]}",
                "HTTP_HOST": "127.0.0.1",
                "HTTP_PORT": str(self.ports["consumer"]),
                "BATCH_MAX_SECONDS": "0.2",
            },
            tmp / "consumer.log",
        )
        common = {
            **kafka_env,
            "ALPACA_DATA_STREAM_URL": f"ws://127.0.0.1:{self.sim_port}",
            "CHANNELS": "trades,quotes,bars",
            "PUBLISH_MODE": "every_tick",
            "BACKUP_DIR": str(tmp / "backup"),
            "HTTP_HOST": "127.0.0.1",
            "STALE_AFTER_SECONDS": str(STALE_AFTER),
            "RECONNECT_INITIAL_SECONDS": "0.5",
            "RECONNECT_MAX_SECONDS": "2",
            "RECONNECT_LIMIT_SECONDS": "1",
            "RECONNECT_LIMIT_MAX_SECONDS": "4",
            "BACKFILL_QUOTES": "true",
            "BACKFILL_MARGIN_SECONDS": "2",
        }
        self.env = {
            "stocks": {
                **common,
                "SYMBOLS": ",".join(STOCKS),
                "HTTP_PORT": str(self.ports["stocks"]),
            },
            "crypto": {
                **common,
                "SYMBOLS": ",".join(CRYPTO),
                "HTTP_PORT": str(self.ports["crypto"]),
            },
        }
        self.producers = {
            name: Service(f"producer-{name}", f"tickpipe_producer_{name}", env, tmp / f"{name}.log")
            for name, env in self.env.items()
        }
        self.retired: list[Service] = []

    def services(self) -> list[Service]:
        return [self.sim, self.consumer, *self.producers.values(), *self.retired]

    def admin(self, action: str) -> dict[str, Any]:
        reply: dict[str, Any] = http_json(f"http://127.0.0.1:{self.sim_port}/admin/{action}")
        return reply

    def settled(self, name: str) -> bool:
        """Streaming, and every gap seen so far backfilled."""
        port = self.ports[name]
        gaps = _metric(port, "tickpipe_producer_gaps_total")
        passes = _metric(port, "tickpipe_producer_backfill_passes_total")
        return (
            _metric(port, "tickpipe_producer_ws_connected") == 1
            and _metric(port, "tickpipe_producer_backfill_pending") == 0
            and passes >= gaps
            and http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        )

    def wait_reconnected(self, at_least: dict[str, float], what: str) -> None:
        def done() -> bool:
            return all(
                _metric(self.ports[n], "tickpipe_producer_ws_reconnects_total") >= k
                for n, k in at_least.items()
            ) and all(self.settled(n) for n in self.producers)

        wait_for(done, 90, what)

    def reconnects(self) -> dict[str, float]:
        return {
            n: _metric(self.ports[n], "tickpipe_producer_ws_reconnects_total")
            for n in self.producers
        }

    def history(self, kind: str, start_ns: int, end_ns: int) -> list[tuple[str, dict[str, Any]]]:
        """Every (symbol, item) of the simulator's history in [start, end], paged."""
        out: list[tuple[str, dict[str, Any]]] = []
        for path, symbols in (
            (f"/v2/stocks/{kind}", STOCKS),
            (f"/v1beta3/crypto/us/{kind}", CRYPTO),
        ):
            token = None
            while True:
                query = {
                    "symbols": ",".join(symbols),
                    "start": format_rfc3339_ns(start_ns),
                    "end": format_rfc3339_ns(end_ns),
                    "limit": "10000",
                    "timeframe": "1Min",
                    **({"page_token": token} if token else {}),
                }
                url = f"http://127.0.0.1:{self.sim_port}{path}?{urllib.parse.urlencode(query)}"
                request = urllib.request.Request(url, headers=KEY)
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    body = json.loads(response.read())
                for symbol, items in body[kind].items():
                    out.extend((symbol, item) for item in items)
                token = body.get("next_page_token")
                if not token:
                    break
        return out


@pytest.fixture
def run(
    kafka_bootstrap: str, fresh_topic: str, fresh_database: str, tmp_path: Path
) -> Iterator[Run]:
    the_run = Run(kafka_bootstrap, fresh_topic, fresh_database, tmp_path)
    try:
        the_run.sim.start().wait_http(f"http://127.0.0.1:{the_run.sim_port}/healthz")
        the_run.consumer.start().wait_http(f"http://127.0.0.1:{the_run.ports['consumer']}/readyz")
        for name, producer in the_run.producers.items():
            producer.start().wait_http(f"http://127.0.0.1:{the_run.ports[name]}/readyz")
        yield the_run
    finally:
        for service in the_run.services():
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
                service.process.wait()


def _stored(dsn: str, start_ns: int, end_ns: int) -> Counter[tuple[Any, ...]]:
    """Rows of the table stamped in [start, end], as comparable tuples (with multiplicity)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT kind, symbol, ts_ns, trade_id, price, size, bid_price, bid_size,"
            " ask_price, ask_size, open, high, low, close, volume, trade_count"
            " FROM market_ticks WHERE ts_ns BETWEEN %s AND %s",
            (start_ns, end_ns),
        ).fetchall()
    out: Counter[tuple[Any, ...]] = Counter()
    for kind, symbol, ts, tid, p, s, bp, bs, ap, as_, o, h, lo, c, v, n in rows:
        if kind == "trade":
            out[("trade", symbol, ts, tid, p, s)] += 1
        elif kind == "quote":
            out[("quote", symbol, ts, bp, bs, ap, as_)] += 1
        else:
            out[(kind, symbol, ts, o, h, lo, c, v, n)] += 1
    return out


def _truth(run: Run, start_ns: int, end_ns: int) -> Counter[tuple[Any, ...]]:
    """What the market did in [start, end]: trades and quotes, and the bars whose whole minute
    lies inside (a bar is stamped with its minute's start)."""
    out: Counter[tuple[Any, ...]] = Counter()
    for symbol, t in run.history("trades", start_ns, end_ns):
        out[("trade", symbol, parse_rfc3339_ns(t["t"]), t["i"], t["p"], t["s"])] += 1
    for symbol, q in run.history("quotes", start_ns, end_ns):
        out[("quote", symbol, parse_rfc3339_ns(q["t"]), q["bp"], q["bs"], q["ap"], q["as"])] += 1
    for symbol, b in run.history("bars", start_ns, end_ns):
        ts = parse_rfc3339_ns(b["t"])
        if ts + BAR_NS <= end_ns:
            out[("bar", symbol, ts, b["o"], b["h"], b["l"], b["c"], b["v"], b["n"])] += 1
    return out


def _bars_match(stored: list[tuple[Any, ...]], truth: list[tuple[Any, ...]]) -> list[str]:
    """Per (symbol, minute): the stored bar is the history's, or the history's less its one
    late print. Returns what does not match."""
    by_key = {(b[1], b[2]): b for b in truth}
    problems = []
    if len(stored) != len(truth) or {(b[1], b[2]) for b in stored} != set(by_key):
        problems.append(f"bars stored {sorted(stored)} != history {sorted(truth)}")
        return problems
    for bar in stored:
        want = by_key[(bar[1], bar[2])]
        same_prices = bar[3:7] == want[3:7]
        whole = bar[7:] == want[7:]
        before_late_print = bar[8] == want[8] - 1 and bar[7] < want[7]
        if not (same_prices and (whole or before_late_print)):
            problems.append(f"bar {bar} vs history {want}")
    return problems


def _compare(run: Run, start_ns: int, end_ns: int) -> list[str]:
    stored = _stored(run.dsn, start_ns, end_ns)
    truth = _truth(run, start_ns, end_ns)
    problems = []
    for kind in ("trade", "quote"):
        have = Counter({k: n for k, n in stored.items() if k[0] == kind})
        want = Counter({k: n for k, n in truth.items() if k[0] == kind})
        if have != want:
            missing, extra = want - have, have - want
            problems.append(
                f"{kind}s: {len(want)} in the history, {sum(have.values())} stored; missing "
                f"{len(missing)} {sorted(missing)[:3]}, extra {len(extra)} {sorted(extra)[:3]}"
            )
    in_window = [k for k in stored.elements() if k[0] == "bar" and k[2] + BAR_NS <= end_ns]
    problems += _bars_match(in_window, [k for k in truth if k[0] == "bar"])
    return problems


def test_no_tick_is_lost_to_drops_mutes_slow_clients_half_dead_slots_or_a_sigkill(
    run: Run,
) -> None:
    def rows_for_every_symbol() -> bool:
        with psycopg.connect(run.dsn) as conn:
            seen = {r[0] for r in conn.execute("SELECT DISTINCT symbol FROM market_ticks")}
        return seen >= {*STOCKS, *CRYPTO}

    wait_for(rows_for_every_symbol, 60, "both producers' first rows")
    # Everything the market does from here on is owed to the table.
    start_ns = time.time_ns()

    # 1-2. Two abrupt drops (no close frame, as a network cut).
    for n in (1, 2):
        before = run.reconnects()
        assert run.admin("drop?how=abrupt")["dropped"] == 2
        run.wait_reconnected({k: v + 1 for k, v in before.items()}, f"reconnect after drop {n}")

    # 3. A mute past STALE_AFTER_SECONDS: the producers give up on the silent sockets.
    before = run.reconnects()
    run.admin(f"mute?seconds={STALE_AFTER * 2 + 1}")
    run.wait_reconnected({k: v + 1 for k, v in before.items()}, "reconnect after the mute")

    # 4. A 407: a client more than one message behind is a slow client.
    before = run.reconnects()
    run.admin("slow?backlog=1")
    sim_metrics = run.sim_port

    def slow_clients_dropped() -> bool:
        return _metric(sim_metrics, "tickpipe_sim_protocol_errors_total", code="407") >= 2

    wait_for(slow_clients_dropped, 30, "407 slow client to both producers")
    run.admin("slow?backlog=50000")
    run.wait_reconnected({k: v + 1 for k, v in before.items()}, "reconnect after the 407")

    # 5. Drop 3 with half-dead slots: reconnects get 406 until the slot is freed.
    before = run.reconnects()
    run.admin("half-dead?seconds=4")
    assert run.admin("drop?how=abrupt")["dropped"] == 2

    def refused_with_406() -> bool:
        return all(
            _metric(run.ports[n], "tickpipe_producer_ws_connection_limit_total") >= 1
            for n in run.producers
        )

    wait_for(refused_with_406, 60, "406 connection limit exceeded on reconnect")
    run.wait_reconnected({k: v + 1 for k, v in before.items()}, "reconnect after the 406s")
    for name in run.producers:
        port = run.ports[name]
        assert _metric(port, "tickpipe_producer_gaps_total", reason="reconnect") >= 5, name
    wait_for(
        lambda: all(
            _metric(run.ports[n], "tickpipe_producer_ticks_backfilled_total") > 0
            for n in run.producers
        ),
        30,
        "backfilled ticks published by both producers",
    )

    # 6. SIGKILL the stock producer; the market goes on (and closes at least one minute bar
    #    while nobody listens), then it is started again. The kill comes in a minute that
    #    began after the run did, so the bar made meanwhile is one the comparison covers.
    first_minute = start_ns - start_ns % BAR_NS + BAR_NS

    def minute_begun() -> bool:
        return bool(run.history("trades", first_minute, time.time_ns()))

    wait_for(minute_begun, 75, "the first minute after the run's start to begin")
    stocks = run.producers["stocks"]
    assert stocks.process is not None
    stats_url = f"http://127.0.0.1:{run.sim_port}/stats"

    def bars_made() -> int:
        happened = http_json(stats_url)["happened"]["/v2/iex"]
        return sum(happened.get(s, {}).get("bar", 0) for s in STOCKS)

    bars_before = bars_made()
    stocks.process.kill()
    stocks.process.wait()
    wait_for(lambda: bars_made() > bars_before, 75, "a bar made while the producer is dead")
    run.retired.append(stocks)
    restarted = Service(stocks.name, stocks.module, run.env["stocks"], run.tmp / "stocks-2.log")
    run.producers["stocks"] = restarted
    restarted.start().wait_http(f"http://127.0.0.1:{run.ports['stocks']}/readyz")
    wait_for(lambda: run.settled("stocks"), 60, "the restarted producer's backfill")
    port = run.ports["stocks"]
    assert _metric(port, "tickpipe_producer_gaps_total", reason="restart") == 1
    # "Settled" means the backfill pass is done: its pages are handed to the sink, which may
    # not have published them yet (a rehearsal caught the bar still queued there).
    wait_for(
        lambda: _metric(port, "tickpipe_producer_ticks_backfilled_total", kind="bar") >= 1,
        30,
        "the backfilled bar published",
    )

    # The run window ends once a whole minute bar of every symbol lies inside it.
    def whole_bar_inside() -> bool:
        now = time.time_ns()
        bars = run.history("bars", start_ns, now)
        full = {s for s, b in bars if parse_rfc3339_ns(b["t"]) + BAR_NS <= now - 10**9}
        return full >= {*STOCKS, *CRYPTO}

    wait_for(whole_bar_inside, 75, "a whole minute bar of every symbol in the run")
    wait_for(lambda: all(run.settled(n) for n in run.producers), 60, "both producers settled")
    end_ns = time.time_ns() - 10**9

    # Everything the market did in the window reaches the table: trades and quotes exactly,
    # none twice, and every minute bar.
    problems: list[str] = []

    def complete() -> bool:
        problems[:] = _compare(run, start_ns, end_ns)
        return not problems

    try:
        wait_for(complete, 90, "the table to equal the market's history")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(problems)) from None
    _assert_contiguous_trade_ids(run.dsn, start_ns, end_ns)
    for name in run.producers:
        port = run.ports[name]
        assert metric_sum(port, "tickpipe_producer_backfill_errors_total") == 0, name
        assert _metric(port, "tickpipe_producer_backfill_passes_total", outcome="failed") == 0

    for service in (*run.producers.values(), run.consumer, run.sim):
        assert service.stop() == 0, service.log_tail()


def _assert_contiguous_trade_ids(dsn: str, start_ns: int, end_ns: int) -> None:
    with psycopg.connect(dsn) as conn:
        for symbol in (*STOCKS, *CRYPTO):
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT trade_id FROM market_ticks WHERE symbol = %s AND kind = 'trade'"
                    " AND ts_ns BETWEEN %s AND %s ORDER BY trade_id",
                    (symbol, start_ns, end_ns),
                )
            ]
            assert ids, symbol
            assert ids == list(range(ids[0], ids[0] + len(ids))), symbol
