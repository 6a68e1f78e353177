"""Fixtures for the real services the tests need: a Kafka broker and PostgreSQL.

Where they come from, in order:
1. ``TICKPIPE_TEST_KAFKA_BOOTSTRAP`` / ``TICKPIPE_TEST_DATABASE_URL`` (or the services' own
   ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL``): any broker and database you point at;
2. testcontainers, when a Docker engine answers AND already holds the images it would run
   (``TICKPIPE_TEST_KAFKA_IMAGE``, default apache/kafka:4.1.1; ``TICKPIPE_TEST_POSTGRES_IMAGE``,
   default postgres:17; and testcontainers' ryuk image unless ``TESTCONTAINERS_RYUK_DISABLED``):
   an engine that would have to pull them from a registry is no reason to fail when the local
   stack can run, and where no registry is reachable (CI here) that pull cannot work;
3. the project's local process stack (``deploy/local/stack.sh``), started on demand.

Under ``CI=true`` a service that cannot be had fails the test run; it never skips.
Markers follow the folder a test lives in (unit, integration, e2e, deploy, engines). The live
checks on real engines (tests/engines) run only with ``-m engines`` (``make test-deploy``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql
from testcontainers.community.kafka import KafkaContainer
from testcontainers.community.postgres import PostgresContainer
from testcontainers.core.config import testcontainers_config

from tests.availability import unavailable

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "deploy" / "local" / "stack.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.path)).relative_to(REPO / "tests").parts[0]
        if folder in ("unit", "integration", "e2e", "deploy", "engines"):
            item.add_marker(getattr(pytest.mark, folder))


@functools.cache
def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


KAFKA_IMAGE = os.environ.get("TICKPIPE_TEST_KAFKA_IMAGE", "apache/kafka:4.1.1")
POSTGRES_IMAGE = os.environ.get("TICKPIPE_TEST_POSTGRES_IMAGE", "postgres:17")


@functools.cache
def _engine_has(image: str) -> bool:
    probe = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, check=False, timeout=20
    )
    return probe.returncode == 0


def _testcontainers_can_run(image: str) -> bool:
    """A Docker engine answers and has the image, and ryuk's, without pulling anything."""
    if not _docker_answers():
        return False
    needed = [image]
    if not testcontainers_config.ryuk_disabled:
        needed.append(testcontainers_config.ryuk_image)
    return all(_engine_has(name) for name in needed)


@functools.cache
def _local_stack_env() -> dict[str, str]:
    """Start Kafka and PostgreSQL of the local stack (idempotent) and read their addresses."""
    start = subprocess.run(
        ["bash", str(STACK), "start", "infra"], capture_output=True, text=True, check=False
    )
    if start.returncode != 0:
        raise RuntimeError(f"{STACK} start infra failed:\n{start.stdout}\n{start.stderr}")
    env = subprocess.run(
        ["bash", str(STACK), "env"], capture_output=True, text=True, check=True
    ).stdout
    pairs = (line.removeprefix("export ").split("=", 1) for line in env.splitlines() if "=" in line)
    return {k.strip(): v.strip().strip("'\"") for k, v in pairs}


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("TICKPIPE_TEST_KAFKA_BOOTSTRAP") or os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS"
    )
    if given:
        yield given
        return
    if _testcontainers_can_run(KAFKA_IMAGE):
        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    try:
        yield _local_stack_env()["KAFKA_BOOTSTRAP_SERVERS"]
    except (RuntimeError, KeyError) as exc:
        unavailable("Kafka", str(exc))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A DSN to a database we may CREATE/DROP other databases from."""
    given = os.environ.get("TICKPIPE_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    if _testcontainers_can_run(POSTGRES_IMAGE):
        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    try:
        yield _local_stack_env()["DATABASE_URL"]
    except (RuntimeError, KeyError) as exc:
        unavailable("PostgreSQL", str(exc))


def _wait_for_database(dsn: str) -> None:
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", str(exc))


@pytest.fixture
def fresh_database(pg_admin_dsn: str) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards. Yields its DSN."""
    _wait_for_database(pg_admin_dsn)
    name = f"tickpipe_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name)
    yield dsn
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def fresh_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A new tick topic (3 partitions) and its ``.dlq`` twin for one test. Yields the name."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = f"test_ticks_{uuid.uuid4().hex[:10]}"
    topics = [NewTopic(name, num_partitions=3), NewTopic(f"{name}.dlq", num_partitions=1)]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        try:
            future.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - any failure here means no broker to test with
            unavailable("Kafka", f"could not create topic {name}: {exc}")
    yield name
    admin.delete_topics([name, f"{name}.dlq"], operation_timeout=30)
