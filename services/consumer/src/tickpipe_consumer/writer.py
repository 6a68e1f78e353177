"""One batch of rows → ``market_ticks`` in one transaction, idempotently.

COPY (binary) into a per-connection temporary staging table, then one
``INSERT … SELECT … ON CONFLICT DO NOTHING``: the fast bulk path of COPY with the
idempotence of the primary key (symbol, ts, tick_id). A tick already stored, or present
twice in the same batch, is skipped rather than failing the batch (for DO NOTHING,
PostgreSQL checks each row against the rows the same statement already inserted).

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
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tickpipe_common.logging import get_logger
from tickpipe_consumer.rows import COLUMN_NAMES, COLUMN_TYPES, Row

log = get_logger(__name__)

STAGING_TABLE = "market_ticks_staging"

_COLUMNS = sql.SQL(", ").join(sql.Identifier(name) for name in COLUMN_NAMES)

# LIKE copies the columns and NOT NULLs but no keys: the staging table accepts in-batch
# duplicates, which the INSERT then folds. ON COMMIT DELETE ROWS empties it at every commit,
# and a rollback discards its rows with the rest of the transaction. A temporary table lives
# as long as the session, so a transaction-pooling proxy (pgbouncer) needs session pooling.
_CREATE_STAGING = sql.SQL(
    "CREATE TEMPORARY TABLE IF NOT EXISTS {} (LIKE market_ticks INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
).format(sql.Identifier(STAGING_TABLE))

_COPY = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
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


@dataclass(frozen=True)
class WriteResult:
    inserted_by_kind: dict[str, int]
    inserted_ts_ns: list[int]  # exchange time of each inserted row
    committed_at_ns: int
    seconds: float
    inserted_kinds: tuple[str, ...] = ()  # kind of each inserted row (as inserted_ts_ns)

    @property
    def inserted(self) -> int:
        return sum(self.inserted_by_kind.values())


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

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def write(self, rows: Sequence[Row]) -> WriteResult:
        """Store ``rows`` in one transaction; duplicates of stored ticks are skipped."""
        conn = self._connection()
        started = time.perf_counter()
        try:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(_COPY) as copy:
                    copy.set_types(list(COLUMN_TYPES))
                    for row in rows:
                        copy.write_row(row)
                cur.execute(_INSERT)
                inserted = cur.fetchall()
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # The transaction block has rolled back; the connection itself is fine.
            raise RowsRejectedError(_describe(exc)) from exc
        except psycopg.Error as exc:
            # Anything else (lost connection, shutdown, timeout, a missing table while an
            # operator restores a backup …) is retried; a fresh connection is the safe start.
            self._discard()
            raise TransientDatabaseError(_describe(exc)) from exc
        return WriteResult(
            inserted_by_kind=dict(Counter(str(kind) for kind, _ in inserted)),
            inserted_ts_ns=[int(ts_ns) for _, ts_ns in inserted],
            committed_at_ns=time.time_ns(),
            seconds=time.perf_counter() - started,
            inserted_kinds=tuple(str(kind) for kind, _ in inserted),
        )

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
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,  # transactions are explicit: conn.transaction()
                connect_timeout=self._connect_timeout,
                application_name=self._application_name,
                # Notice a silently dead peer (a network partition, a killed VM) in seconds,
                # instead of waiting on a socket that will never answer.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
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
