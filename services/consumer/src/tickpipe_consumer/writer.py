"""One batch of rows → ``market_ticks`` in one transaction, idempotently, at COPY speed.

Two paths, chosen per batch:

- **optimistic** (the common case: new ticks): one binary ``COPY`` straight into
  ``market_ticks``. Nothing else is as fast; the primary key (symbol, ts, tick_id) still
  guards idempotence, because a tick already stored makes the COPY fail with a unique
  violation, which rolls the whole transaction back — nothing is half-written.
- **staging** (after such a conflict: a replay, a redelivery after a crash, a tick twice in
  one batch): COPY into a per-connection temporary table, then one
  ``INSERT … SELECT … ON CONFLICT DO NOTHING``, which skips what is stored (for DO NOTHING,
  PostgreSQL also checks each row against those the same statement inserted). Its RETURNING
  rows say which ticks were new; this path is for duplicates, so their cost is not the
  common case's.

A conflict switches the writer to the staging path until a batch goes through it without a
single duplicate; then it tries the optimistic path again. A replay therefore pays one failed
COPY, not one per batch.

Rows arrive already encoded as binary COPY tuples (``rows.py``), so a batch goes to
PostgreSQL as one block of bytes (``copy_data``): no per-value adaptation here.

Nothing per row happens after the write on the optimistic path: inserted counts per kind come
from the rows themselves, and the end-to-end latency is observed on a sample of them
(``LATENCY_SAMPLE``), not on every row.

Errors are sorted into two kinds the caller treats differently:
``TransientDatabaseError`` (the database is unreachable, restarting, timing out: retry the
same rows later) and ``RowsRejectedError`` (the data itself was refused: retrying the same
rows can never work, so the caller isolates the row).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tickpipe_common.logging import get_logger
from tickpipe_consumer.db import connect
from tickpipe_consumer.rows import COLUMN_NAMES, COPY_SIGNATURE, COPY_TRAILER, Row

log = get_logger(__name__)

STAGING_TABLE = "market_ticks_staging"
# At most this many inserted rows per batch feed the end-to-end latency histogram.
LATENCY_SAMPLE = 64

_COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in COLUMN_NAMES)

# LIKE copies the columns and NOT NULLs but no keys: the staging table accepts in-batch
# duplicates, which the INSERT then folds. ON COMMIT DELETE ROWS empties it at every commit,
# and a rollback discards its rows with the rest of the transaction. A temporary table lives
# as long as the session, so a transaction-pooling proxy (pgbouncer) needs session pooling.
_CREATE_STAGING = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE market_ticks INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
).format(sql.Identifier(STAGING_TABLE))

_COPY_DIRECT = sql.SQL("COPY market_ticks ({}) FROM STDIN (FORMAT BINARY)").format(_COLUMNS)
_COPY_STAGING = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.Identifier(STAGING_TABLE), _COLUMNS
)

# RETURNING yields one short row per *inserted* tick: inserted counts per kind (batch size
# minus inserted is the number of duplicates skipped), and the exchange times for the
# end-to-end latency of what was actually stored (a replayed day-old tick is not "late").
_INSERT = sql.SQL(
    "INSERT INTO market_ticks ({cols}) SELECT {cols} FROM {staging} "
    "ON CONFLICT DO NOTHING RETURNING kind, ts_ns"
).format(cols=_COLUMNS, staging=sql.Identifier(STAGING_TABLE))


class TransientDatabaseError(Exception):
    """The write may succeed if tried again later (connection lost, server down, timeout)."""


class RowsRejectedError(Exception):
    """The database refused the data itself; the same rows will fail again."""


@dataclass(slots=True)
class KindTally:
    """Rows of one kind newly inserted by a batch, and a sample of their exchange times."""

    inserted: int = 0
    sample_ts_ns: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class WriteResult:
    by_kind: dict[str, KindTally]
    committed_at_ns: int
    seconds: float
    path: str  # "copy" (optimistic) or "staging"

    @property
    def inserted(self) -> int:
        return sum(tally.inserted for tally in self.by_kind.values())


def tally(inserted: Sequence[tuple[Any, Any]]) -> dict[str, KindTally]:
    """(kind, ts_ns) of each inserted row → per kind: how many, and an evenly spaced sample
    of at most about ``LATENCY_SAMPLE`` exchange times in all."""
    by_kind: dict[str, KindTally] = {}
    for kind, count in Counter([kind for kind, _ in inserted]).items():
        by_kind[str(kind)] = KindTally(count)
    for kind, ts_ns in inserted[:: max(1, len(inserted) // LATENCY_SAMPLE)]:
        by_kind[str(kind)].sample_ts_ns.append(int(ts_ns))
    return by_kind


def copy_data(rows: Sequence[Row]) -> bytes:
    """The whole ``COPY … (FORMAT BINARY)`` stream of ``rows``: signature, tuples, trailer.
    (psycopg passes a block written with ``Copy.write`` through as it is.)"""
    return b"".join([COPY_SIGNATURE, *[row.data for row in rows], COPY_TRAILER])


class TickWriter:
    """Owns one database connection, reconnecting lazily after it is lost."""

    def __init__(
        self,
        dsn: str,
        connect_timeout_seconds: int = 5,
        statement_timeout_seconds: int = 60,
        application_name: str = "tickpipe-consumer",
    ) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout_seconds
        self._statement_timeout_ms = statement_timeout_seconds * 1000
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._optimistic = True

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def write(self, rows: Sequence[Row]) -> WriteResult:
        """Store ``rows`` in one transaction; duplicates of stored ticks are skipped."""
        conn = self._connection()
        started = time.perf_counter()
        try:
            if self._optimistic:
                try:
                    by_kind = self._copy_direct(conn, rows)
                    path = "copy"
                except psycopg.errors.UniqueViolation:
                    # Rolled back whole: nothing of the batch is stored. Take the slow path,
                    # and stay on it while batches keep meeting stored ticks.
                    self._optimistic = False
                    log.info("write_path_staging", why="a tick in the batch is stored already")
            if not self._optimistic:
                by_kind, all_new = self._copy_staging(conn, rows)
                path = "staging"
                if all_new:
                    self._optimistic = True
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # The transaction block has rolled back; the connection itself is fine.
            raise RowsRejectedError(_describe(exc)) from exc
        except psycopg.Error as exc:
            # Anything else (lost connection, shutdown, timeout, a missing table while an
            # operator restores a backup …) is retried; a fresh connection is the safe start.
            self._discard()
            raise TransientDatabaseError(_describe(exc)) from exc
        return WriteResult(
            by_kind=by_kind,
            committed_at_ns=time.time_ns(),
            seconds=time.perf_counter() - started,
            path=path,
        )

    def _copy_direct(
        self, conn: psycopg.Connection[Any], rows: Sequence[Row]
    ) -> dict[str, KindTally]:
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_DIRECT) as copy:
            copy.write(copy_data(rows))
        return tally([(row.kind, row.ts_ns) for row in rows])

    def _copy_staging(
        self, conn: psycopg.Connection[Any], rows: Sequence[Row]
    ) -> tuple[dict[str, KindTally], bool]:
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy(_COPY_STAGING) as copy:
                copy.write(copy_data(rows))
            cur.execute(_INSERT)
            inserted = cur.fetchall()
        return tally(inserted), len(inserted) == len(rows)

    def ping(self) -> None:
        """Raise ``TransientDatabaseError`` unless the database answers a trivial query."""
        conn = self._connection()
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as exc:
            self._discard()
            raise TransientDatabaseError(_describe(exc)) from exc

    def close(self) -> None:
        self._discard()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = connect(
                self._dsn,
                connect_timeout=self._connect_timeout,
                application_name=self._application_name,
            )
        except psycopg.Error as exc:
            raise TransientDatabaseError(_describe(exc)) from exc
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (str(self._statement_timeout_ms),),
            )
            conn.execute(_CREATE_STAGING)
        except psycopg.Error as exc:
            conn.close()
            raise TransientDatabaseError(_describe(exc)) from exc
        self._conn = conn
        log.info("database_connected", host=conn.info.host, dbname=conn.info.dbname)
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection may itself fail; either way it is gone.
            with contextlib.suppress(psycopg.Error):
                conn.close()


def _describe(exc: psycopg.Error) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else "(no message)"
    name = type(exc).__name__
    return f"{name}[{exc.sqlstate}]: {text}" if exc.sqlstate else f"{name}: {text}"
