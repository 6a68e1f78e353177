"""``tickpipe status``: a one-screen summary of a running pipeline, at the terminal.

Reads each service's ``/metrics`` and ``/readyz`` twice, a moment apart, to turn counters
into rates, and asks the database for the newest tick of every symbol. ``--watch`` refreshes
it (rates then cover the time since the previous refresh). Where it looks comes from
``StatusSettings`` (the local stack's ports from ``deploy/ports.env`` and their
``TICKPIPE_*_PORT`` variables, ``DATABASE_URL``), then the command line; ``make status`` runs it.

Exit status: 0; with ``--check``, 1 when a service is down or not ready, or the database
does not answer.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from tickpipe_common.settings import load_settings
from tickpipe_status.settings import StatusSettings

MAX_SYMBOL_ROWS = 20

# (row title, counter) in pipeline order; each total is summed over every target.
STAGES: tuple[tuple[str, str], ...] = (
    ("simulator sent", "tickpipe_sim_messages_sent_total"),
    ("producers received", "tickpipe_producer_ticks_received_total"),
    ("producers filtered", "tickpipe_producer_ticks_filtered_total"),
    ("producers published", "tickpipe_producer_ticks_published_total"),
    ("publish errors", "tickpipe_producer_publish_errors_total"),
    ("consumer consumed", "tickpipe_consumer_messages_consumed_total"),
    ("rows inserted", "tickpipe_consumer_rows_inserted_total"),
    ("duplicates skipped", "tickpipe_consumer_duplicates_skipped_total"),
    ("DLQ messages", "tickpipe_consumer_dlq_messages_total"),
    ("database errors", "tickpipe_consumer_db_errors_total"),
)

# The producers' gaps in the stream and their backfill (rows like STAGES').
BACKFILL: tuple[tuple[str, str], ...] = (
    ("gaps seen", "tickpipe_producer_gaps_total"),
    ("gap seconds", "tickpipe_producer_gap_seconds_sum"),
    ("ticks backfilled", "tickpipe_producer_ticks_backfilled_total"),
    ("backfill errors", "tickpipe_producer_backfill_errors_total"),
)

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


# ------------------------------------------------------------------------------ parsing


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition → {(sample name, sorted labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def series(samples: Samples, name: str) -> dict[Labels, float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def total(samples: Samples, name: str) -> float | None:
    """Sum of every series of ``name``; None when there is none."""
    values = series(samples, name).values()
    return sum(values) if values else None


def histogram_buckets(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative counts by upper bound of ``name``'s ``_bucket`` series, summed over labels."""
    buckets: dict[float, float] = {}
    for labels, value in series(samples, f"{name}_bucket").items():
        le = float(dict(labels)["le"])
        buckets[le] = buckets.get(le, 0.0) + value
    return buckets


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' estimate: linear interpolation inside the bucket the rank falls in.
    ``buckets`` maps upper bound → cumulative count (with +Inf). None without observations."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    observations = buckets[bounds[-1]]
    if observations <= 0:
        return None
    rank = q * observations
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # above the highest finite bound: its value
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """Observations between two scrapes; empty if the counters went back (a restart)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    if any(v < 0 for v in delta.values()):
        return {}
    return delta


# ------------------------------------------------------------------------------ collecting


@dataclass
class Scrape:
    name: str
    url: str
    at: float  # time.monotonic() of the scrape
    samples: Samples = field(default_factory=dict)
    up: bool = False
    ready: bool | None = None  # None: /readyz did not answer
    error: str | None = None


Fetch = Callable[[str, float], tuple[int, str]]


def http_fetch(url: str, timeout: float) -> tuple[int, str]:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode("utf-8", "replace")


def scrape(name: str, base_url: str, timeout: float = 2.0, fetch: Fetch = http_fetch) -> Scrape:
    base = base_url.rstrip("/")
    result = Scrape(name, base, time.monotonic())
    try:
        status, body = fetch(f"{base}/metrics", timeout)
        if status != 200:
            raise OSError(f"/metrics answered {status}")
        result.samples = parse_metrics(body)
        result.up = True
    except (OSError, ValueError) as exc:
        result.error = _reason(exc)
        return result
    try:
        status, _ = fetch(f"{base}/readyz", timeout)
        result.ready = status == 200
    except (OSError, ValueError):
        result.ready = None
    return result


def scrape_all(
    targets: Mapping[str, str], timeout: float, fetch: Fetch = http_fetch
) -> list[Scrape]:
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        futures = [pool.submit(scrape, n, u, timeout, fetch) for n, u in targets.items()]
        return [f.result() for f in futures]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and exc.reason is not None:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# Newest tick per symbol. A loose index scan over the primary key (symbol, ts, …): one index
# probe per symbol instead of reading the whole table.
LAST_TICKS_SQL = """
WITH RECURSIVE symbols AS (
    (SELECT symbol FROM market_ticks ORDER BY symbol LIMIT 1)
    UNION ALL
    SELECT (SELECT m.symbol FROM market_ticks m WHERE m.symbol > s.symbol
            ORDER BY m.symbol LIMIT 1)
    FROM symbols s WHERE s.symbol IS NOT NULL
)
SELECT symbol, (SELECT max(ts) FROM market_ticks m WHERE m.symbol = symbols.symbol)
FROM symbols WHERE symbol IS NOT NULL ORDER BY symbol
"""


@dataclass
class DatabaseView:
    where: str  # host:port/dbname, never the password
    last_ticks: list[tuple[str, datetime]] = field(default_factory=list)
    error: str | None = None


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a libpq DSN or URL, without user or password."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - any unparsable DSN: say nothing about it
        return "(unparsable DATABASE_URL)"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    return f"{host}:{port}/{parts.get('dbname') or ''}"


def query_last_ticks(dsn: str, timeout: float = 5.0) -> DatabaseView:
    view = DatabaseView(describe_dsn(dsn))
    try:
        with psycopg.connect(
            dsn,
            connect_timeout=max(1, math.ceil(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            application_name="tickpipe-status",
        ) as conn:
            conn.read_only = True
            rows = conn.execute(LAST_TICKS_SQL).fetchall()
    except psycopg.Error as exc:
        # psycopg's messages name host and port, never the password.
        view.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return view
    view.last_ticks = [(str(symbol), ts) for symbol, ts in rows if ts is not None]
    return view


# ------------------------------------------------------------------------------ the report


@dataclass
class ServiceState:
    name: str
    url: str
    up: bool
    ready: bool | None
    error: str | None


@dataclass
class StageRow:
    title: str
    per_second: float | None
    total: float | None


@dataclass
class Report:
    taken_at: datetime
    window_seconds: float
    services: list[ServiceState]
    stages: list[StageRow]
    backfill: list[StageRow]
    backfill_pending: float | None
    lag_total: float | None
    lag_by_partition: dict[str, float]
    dlq_by_reason: dict[str, float]
    e2e_p50: float | None
    e2e_p99: float | None
    delivery_p99: float | None
    database: DatabaseView | None


def _merged(scrapes: Iterable[Scrape]) -> Samples:
    merged: Samples = {}
    for s in scrapes:
        for key, value in s.samples.items():
            merged[key] = merged.get(key, 0.0) + value
    return merged


def build_report(
    before: Sequence[Scrape],
    after: Sequence[Scrape],
    database: DatabaseView | None,
    now: datetime | None = None,
) -> Report:
    """Rates from two scrape rounds of the same targets; totals and gauges from the second."""
    new = _merged(s for s in after if s.up)
    starts = [s.at for s in before]
    ends = [s.at for s in after]
    window = (sum(ends) / len(ends) - sum(starts) / len(starts)) if starts and ends else 0.0
    # Only targets up in both rounds count for rates, so a service coming up is no spike.
    both = {s.name for s in before if s.up} & {s.name for s in after if s.up}
    old_both = _merged(s for s in before if s.name in both)
    new_both = _merged(s for s in after if s.name in both)

    def rows(names: Sequence[tuple[str, str]]) -> list[StageRow]:
        out = []
        for title, name in names:
            rate = None
            a, b = total(old_both, name), total(new_both, name)
            if a is not None and b is not None and window > 0 and b >= a:
                rate = (b - a) / window
            out.append(StageRow(title, rate, total(new, name)))
        return out

    lag = {
        dict(k).get("partition", "?"): v
        for k, v in series(new, "tickpipe_consumer_lag_messages").items()
    }
    dlq = {
        dict(k).get("reason", "?"): v
        for k, v in series(new, "tickpipe_consumer_dlq_messages_total").items()
    }

    def quantile(name: str, q: float) -> float | None:
        delta = bucket_delta(histogram_buckets(old_both, name), histogram_buckets(new_both, name))
        return histogram_quantile(q, delta)

    e2e = "tickpipe_consumer_end_to_end_latency_seconds"
    return Report(
        taken_at=now or datetime.now(UTC),
        window_seconds=window,
        services=[ServiceState(s.name, s.url, s.up, s.ready, s.error) for s in after],
        stages=rows(STAGES),
        backfill=rows(BACKFILL),
        backfill_pending=total(new, "tickpipe_producer_backfill_pending"),
        lag_total=sum(lag.values()) if lag else None,
        lag_by_partition=lag,
        dlq_by_reason=dlq,
        e2e_p50=quantile(e2e, 0.5),
        e2e_p99=quantile(e2e, 0.99),
        delivery_p99=quantile("tickpipe_producer_delivery_latency_seconds", 0.99),
        database=database,
    )


def healthy(report: Report) -> bool:
    services_ok = all(s.up and s.ready for s in report.services)
    database_ok = report.database is None or report.database.error is None
    return services_ok and database_ok


# ------------------------------------------------------------------------------ rendering


def _number(value: float | None, decimals: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{decimals}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    if value < 172_800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def _state(s: ServiceState) -> str:
    if not s.up:
        return "DOWN"
    if s.ready is None:
        return "up, readiness unknown"
    return "up, ready" if s.ready else "up, NOT READY"


def render(report: Report) -> str:
    lines = [
        f"tickpipe status  {report.taken_at:%Y-%m-%d %H:%M:%S} UTC  "
        f"(rates over the last {report.window_seconds:.1f} s)",
        "",
        f"{'SERVICE':<17}{'STATE':<24}URL",
    ]
    for s in report.services:
        detail = f"  ({s.error})" if s.error else ""
        lines.append(f"{s.name:<17}{_state(s):<24}{s.url}{detail}")

    lines += ["", f"{'STAGE':<22}{'PER SECOND':>12}{'TOTAL':>16}"]
    for row in report.stages:
        lines.append(f"{row.title:<22}{_number(row.per_second):>12}{_number(row.total, 0):>16}")

    if any(row.total is not None for row in report.backfill):
        pending = report.backfill_pending
        waiting = "" if pending is None else f"  ({pending:,.0f} passes pending)"
        lines += ["", f"{'BACKFILL':<22}{'PER SECOND':>12}{'TOTAL':>16}{waiting}"]
        for row in report.backfill:
            lines.append(f"{row.title:<22}{_number(row.per_second):>12}{_number(row.total, 0):>16}")

    lines.append("")
    if report.lag_total is None:
        lines.append(f"{'consumer lag':<22}-  (no partitions reported)")
    else:
        parts = ", ".join(
            f"p{p} {v:,.0f}" for p, v in sorted(report.lag_by_partition.items(), key=_partition_key)
        )
        lines.append(f"{'consumer lag':<22}{report.lag_total:,.0f} messages  ({parts})")
    if report.dlq_by_reason:
        dlq_total = sum(report.dlq_by_reason.values())
        reasons = ", ".join(f"{r} {v:,.0f}" for r, v in sorted(report.dlq_by_reason.items()) if v)
        lines.append(
            f"{'DLQ by reason':<22}" + (reasons or "none") + f"  ({dlq_total:,.0f} in total)"
        )
    else:
        lines.append(f"{'DLQ by reason':<22}-  (consumer not reporting)")
    lines.append(
        f"{'latency':<22}end-to-end p50 {_seconds(report.e2e_p50)}, p99 {_seconds(report.e2e_p99)};"
        f" Kafka delivery p99 {_seconds(report.delivery_p99)}"
    )

    db = report.database
    if db is not None:
        lines += ["", f"LAST TICK PER SYMBOL  (database {db.where})"]
        if db.error:
            lines.append(f"  database error: {db.error}")
        elif not db.last_ticks:
            lines.append("  no ticks stored yet")
        else:
            lines.append(f"{'SYMBOL':<14}{'LAST TICK (UTC)':<28}{'AGE':>10}")
            for symbol, ts in db.last_ticks[:MAX_SYMBOL_ROWS]:
                age = (report.taken_at - ts).total_seconds()
                stamp = ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                lines.append(f"{symbol:<14}{stamp:<28}{_seconds(max(0.0, age)):>10}")
            more = len(db.last_ticks) - MAX_SYMBOL_ROWS
            if more > 0:
                lines.append(f"… and {more} more symbols")
    return "\n".join(lines) + "\n"


def _partition_key(item: tuple[str, float]) -> tuple[int, str]:
    partition = item[0]
    return (int(partition), "") if partition.isdigit() else (1 << 30, partition)


# ------------------------------------------------------------------------------ command line


def _parser(settings: StatusSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickpipe", description="tickpipe's command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser(
        "status",
        help="one-screen summary of a running pipeline",
        description="Summarise a running pipeline from its services' /metrics and /readyz and "
        "the database. Defaults: the local stack of `make up`, on the ports of deploy/ports.env "
        "or their TICKPIPE_*_PORT variables.",
    )
    for name, url in settings.targets().items():
        status.add_argument(
            f"--{name}", metavar="URL", default=url, help=f"base URL of {name} (default {url})"
        )
    status.add_argument(
        "--database-url",
        metavar="DSN",
        default=None,
        help="database to read the newest ticks from (default: $DATABASE_URL, else the local "
        f"stack's {settings.local_database_url()})",
    )
    status.add_argument("--no-database", action="store_true", help="do not query the database")
    status.add_argument(
        "--window", type=float, default=1.0, help="seconds between the two scrapes (default 1)"
    )
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (default 2)"
    )
    status.add_argument("--timeout", type=float, default=2.0, help="HTTP timeout in seconds")
    status.add_argument(
        "--check", action="store_true", help="exit 1 if a service is down or not ready"
    )
    return parser


def _targets(args: argparse.Namespace, settings: StatusSettings) -> dict[str, str]:
    return {name: getattr(args, name.replace("-", "_")) for name in settings.targets()}


def run_status(
    args: argparse.Namespace,
    settings: StatusSettings,
    out: Callable[[str], object] = sys.stdout.write,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    targets = _targets(args, settings)
    dsn = None
    if not args.no_database:
        dsn = args.database_url or settings.dsn()
    if args.window <= 0 or args.interval <= 0 or args.timeout <= 0:
        raise SystemExit("tickpipe status: --window, --interval and --timeout must be > 0")

    before = scrape_all(targets, args.timeout)
    sleep(args.window)
    while True:
        after = scrape_all(targets, args.timeout)
        database = query_last_ticks(dsn, args.timeout) if dsn else None
        report = build_report(before, after, database)
        text = render(report)
        if args.watch and sys.stdout.isatty():
            text = "\x1b[H\x1b[2J" + text  # home, clear: redraw in place
        out(text)
        if not args.watch:
            return 1 if args.check and not healthy(report) else 0
        sys.stdout.flush()
        before = after
        sleep(args.interval)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(StatusSettings)
    args = _parser(settings).parse_args(argv)
    try:
        return run_status(args, settings)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
