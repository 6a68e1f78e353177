"""Bring a database to the schema this version writes: ordered, idempotent SQL files.

The files in ``migrations/`` are plain SQL, numbered ``NNNN_name.sql``. Each runs once, in
its own transaction, and is recorded in ``tickpipe_schema_migrations``. All of it happens
under a PostgreSQL advisory lock, so replicas starting together apply each file exactly once
while the others wait. The files are idempotent as well, so a half-recorded history (a
restored backup, a hand-run file) is harmless.

The TimescaleDB steps (0002 hypertable, 0003 continuous aggregate) do nothing on a server
without the extension, and are recorded as applied all the same. So that such a database still
becomes a hypertable once TimescaleDB is there (installed and preloaded later), every run
checks: extension available and ``market_ticks`` not a hypertable → the two files run again
(they are idempotent; the rows are kept, the plain view is replaced by the aggregate), and the
outcome is logged as ``timescaledb_upgrade``.

Runtime policy that follows configuration (TimescaleDB retention) is applied separately on
every start, by ``apply_retention``, because a changed setting must not need a new file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from tickpipe_common.logging import get_logger

log = get_logger(__name__)

# A fixed bigint key for pg_advisory_lock: "tickpipe" in ASCII. Any process applying these
# migrations, the CLI or a consumer replica, takes the same lock.
ADVISORY_LOCK_KEY = int.from_bytes(b"tickpipe", "big")

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_HISTORY = b"""
CREATE TABLE IF NOT EXISTS tickpipe_schema_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: bytes

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql).hexdigest()


def load_migrations() -> list[Migration]:
    """The packaged migration files, in version order."""
    folder = resources.files("tickpipe_consumer").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_bytes()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration files share a version number: {versions}")
    return found


def apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now.

    ``conn`` must be in autocommit mode: each file gets its own explicit transaction, and the
    session-level advisory lock must outlive them.
    """
    if not conn.autocommit:
        raise ValueError("apply_migrations needs an autocommit connection")
    applied_now: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        conn.execute(_CREATE_HISTORY)
        rows = conn.execute("SELECT version, checksum FROM tickpipe_schema_migrations").fetchall()
        recorded: dict[int, str] = {int(v): str(c) for v, c in rows}
        for migration in load_migrations():
            label = f"{migration.version:04d}_{migration.name}"
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    # Not fatal: the files are idempotent and already applied; but an edited
                    # migration is a mistake somebody should hear about.
                    log.warning("migration_changed_since_applied", migration=label)
                continue
            with conn.transaction():
                # No parameters: psycopg sends the file as one simple query, so the several
                # statements in it run in this one transaction.
                conn.execute(migration.sql)
                conn.execute(
                    "INSERT INTO tickpipe_schema_migrations (version, name, checksum) "
                    "VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            log.info("migration_applied", migration=label)
            applied_now.append(label)
        applied_now += _upgrade_to_timescaledb(conn)
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now


_TIMESCALEDB_STEPS = (2, 3)  # the files that only act when TimescaleDB is there


def _upgrade_to_timescaledb(conn: psycopg.Connection[Any]) -> list[str]:
    """Re-run the TimescaleDB steps on a database that was migrated without the extension."""
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available is None or database_features(conn)["hypertable"]:
        return []  # plain PostgreSQL for good, or upgraded already
    steps = [m for m in load_migrations() if m.version in _TIMESCALEDB_STEPS]
    with conn.transaction():
        for migration in steps:
            conn.execute(migration.sql)
    if not database_features(conn)["hypertable"]:
        log.warning(
            "timescaledb_upgrade",
            upgraded=False,
            why="TimescaleDB is installed but could not be used (see the database_notice "
            "lines); market_ticks stays a plain table, and the next start tries again",
        )
        return []
    log.info(
        "timescaledb_upgrade",
        upgraded=True,
        why="market_ticks is now a hypertable, its rows kept; market_bars_1m is a continuous "
        "aggregate",
    )
    return [f"{m.version:04d}_{m.name} (timescaledb upgrade)" for m in steps]


def database_features(conn: psycopg.Connection[Any]) -> dict[str, object]:
    """What this database offers the consumer; logged at start as ``database_features``."""
    server = conn.info.server_version
    timescaledb = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    hypertable = False
    if timescaledb is not None:
        found = conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'market_ticks'"
        ).fetchone()
        hypertable = found is not None
    return {
        "timescaledb": timescaledb is not None,
        "timescaledb_version": None if timescaledb is None else str(timescaledb[0]),
        "hypertable": hypertable,
        "server_version": f"{server // 10000}.{server % 10000}",
    }


def apply_retention(conn: psycopg.Connection[Any], retention_days: int) -> str:
    """Make the TimescaleDB retention policy match RETENTION_DAYS (0 = keep everything).

    Returns what it did, for the log. Without a hypertable there is nothing to apply: plain
    PostgreSQL keeps every row (deleting old ticks there is an operator's decision).
    """
    if not database_features(conn)["hypertable"]:
        if retention_days:
            log.warning(
                "retention_unsupported",
                retention_days=retention_days,
                why="RETENTION_DAYS needs TimescaleDB; on plain PostgreSQL every row is kept",
            )
            return "unsupported"
        return "none"
    current = conn.execute(
        "SELECT config ->> 'drop_after' FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_retention' AND hypertable_name = 'market_ticks'"
    ).fetchone()
    if retention_days == 0:
        if current is None:
            return "none"
        conn.execute("SELECT remove_retention_policy('market_ticks', if_exists => TRUE)")
        return "removed"
    same = conn.execute(
        "SELECT %s::interval = make_interval(days => %s)",
        (None if current is None else current[0], retention_days),
    ).fetchone()
    if same is not None and same[0]:
        return "unchanged"
    with conn.transaction():
        conn.execute("SELECT remove_retention_policy('market_ticks', if_exists => TRUE)")
        conn.execute(
            "SELECT add_retention_policy('market_ticks', drop_after => make_interval(days => %s))",
            (retention_days,),
        )
    return f"{retention_days} days"
