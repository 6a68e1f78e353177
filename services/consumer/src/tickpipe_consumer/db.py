"""The one way the consumer opens a PostgreSQL connection (the writer's and the migrations').

Autocommit (transactions are explicit, and the migrations' advisory lock must outlive them),
a bounded connect timeout, an application name that shows in ``pg_stat_activity``, and TCP
keepalives so that a silently dead peer (a network partition, a killed VM) is noticed in
seconds instead of a socket waiting forever.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict


def connect(dsn: str, *, connect_timeout: int, application_name: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=connect_timeout,
        application_name=application_name,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


def check_dsn(dsn: str) -> None:
    """``ValueError`` saying what is wrong if libpq cannot parse ``dsn`` (no connection made)."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's own message quotes the string, which may hold a password: not repeated.
        raise ValueError(
            "is not a libpq connection string: use a URI such as "
            "postgresql://user@host:5432/marketdata, or key=value pairs (host=... dbname=...)"
        ) from None
