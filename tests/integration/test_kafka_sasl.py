"""The pipeline over SASL_SSL, as the Helm chart runs it: SCRAM-SHA-512, TLS from a CA of the
stack's own, the StandardAuthorizer, and one user per service holding only the chart's ACLs.

The broker is the local stack's opt-in ``kafka-sasl`` instance (``stack.sh start kafka-sasl``,
started here when it is not running, and stopped again afterwards). Each run makes its own
topics, consumer group and users (with the chart's ACLs, ``tickpipe_localstack.kafka_sasl``),
plus a user with no ACL at all. Checked:

- both producers, the consumer and its DLQ producer work with their own users: the table holds
  exactly what the simulator sent, and a poison message reaches the DLQ;
- a wrong password, or a user without ACLs, leaves a service running and not ready, with a log
  line that says what is wrong (no crash loop);
- no password appears in any service's log, ``/metrics`` or ``/readyz``.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from tests.availability import unavailable
from tests.e2e.support import db_counts, metric_sum, sim_sent
from tests.processes import Service, free_port, http_get, http_json, wait_for
from tickpipe_localstack import kafka_sasl
from tickpipe_localstack.kafka_sasl import SaslBroker

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.sh"
EVENTS_PER_SYMBOL = 40
STOCKS = ("AAPL",)
CRYPTO = ("BTC/USD",)
# Whatever a service may say about a failed login or a missing ACL, it must say it this clearly.
AUTH_FAILED = "authentication failed"
NOT_AUTHORIZED = "authorization failed"


def _stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(STACK), *args], capture_output=True, text=True, check=False, timeout=300
    )


@pytest.fixture(scope="module")
def broker() -> Iterator[SaslBroker]:
    was_running = "kafka-sasl       running" in _stack("status").stdout
    started = _stack("start", "kafka-sasl")
    if started.returncode != 0:
        unavailable("the SASL_SSL Kafka broker", f"{started.stdout}\n{started.stderr}")
    run_dir = Path(os.environ.get("TICKPIPE_RUN_DIR") or REPO / ".run").resolve()
    yield kafka_sasl.load(run_dir / "kafka-sasl")
    if not was_running:
        _stack("stop", "kafka-sasl")


@dataclass
class Run:
    """One run's names and users on the SASL broker, and the processes it started."""

    broker: SaslBroker
    topic: str
    group: str
    passwords: dict[str, str]  # user → password
    users: dict[str, str]  # role → user name
    tmp: Path
    services: list[Service] = field(default_factory=list)

    def env(self, role: str, password: str | None = None) -> dict[str, str]:
        user = self.users[role]
        return {
            **self.broker.client_env(user, password or self.passwords[user]),
            "KAFKA_TOPIC": self.topic,
            "HTTP_HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
        }

    def start(self, name: str, module: str, env: dict[str, str]) -> tuple[Service, int]:
        port = free_port()
        service = Service(name, module, {**env, "HTTP_PORT": str(port)}, self.tmp / f"{name}.log")
        self.services.append(service.start())
        service.wait_http(f"http://127.0.0.1:{port}/healthz")
        return service, port


@pytest.fixture(scope="module")
def run(broker: SaslBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    suffix = uuid.uuid4().hex[:8]
    roles = ("producer-stocks", "producer-crypto", "consumer", "intruder")
    users = {role: f"{role}-{suffix}" for role in roles}
    passwords = {user: secrets.token_hex(16) for user in users.values()}
    topic = f"sasl_ticks_{suffix}"
    group = f"sasl-consumer-{suffix}"
    admin = AdminClient(broker.admin_config())
    kafka_sasl.create_topics(admin, {topic: 3, f"{topic}.dlq": 1})
    kafka_sasl.upsert_users(admin, passwords)
    kafka_sasl.grant(
        admin,
        [
            binding
            for role in ("producer-stocks", "producer-crypto", "consumer")
            for binding in kafka_sasl.service_acls(role, users[role], topic, f"{topic}.dlq", group)
        ],
    )  # the intruder gets none
    the_run = Run(broker, topic, group, passwords, users, tmp_path_factory.mktemp("sasl"))
    yield the_run
    for service in the_run.services:
        if service.process is not None and service.process.poll() is None:
            service.process.kill()
            service.process.wait()
    admin.delete_topics([topic, f"{topic}.dlq"], operation_timeout=30)


@pytest.fixture(scope="module")
def database(pg_admin_dsn: str) -> Iterator[str]:
    name = f"tickpipe_sasl_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(pg_admin_dsn, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", str(exc))
    yield psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=name)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        admin.execute(drop.format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def sim_url(run: Run) -> str:
    port = free_port()
    env = {
        "SIM_HOST": "127.0.0.1",
        "SIM_PORT": str(port),
        "SIM_RATE_PER_SYMBOL": "40",
        "SIM_MAX_EVENTS_PER_SYMBOL": str(EVENTS_PER_SYMBOL),
        # A fixed run that reaches its subscribers whole: symbols trade while subscribed.
        "SIM_TRADING": "while_subscribed",
        "SIM_BAR_INTERVAL": "0.5",
    }
    sim = Service("market-sim", "tickpipe_market_sim", env, run.tmp / "market-sim.log")
    run.services.append(sim.start())
    sim.wait_http(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}"


def _producer_env(
    run: Run, sim_url: str, symbols: tuple[str, ...], channels: str
) -> dict[str, str]:
    return {
        "ALPACA_DATA_STREAM_URL": sim_url.replace("http://", "ws://"),
        "PUBLISH_MODE": "every_tick",
        "BACKUP_DIR": str(run.tmp / "backup"),
        "SYMBOLS": ",".join(symbols),
        "CHANNELS": channels,
    }


def _ready(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def _log_has(service: Service, text: str) -> bool:
    return text in service.log_path.read_text(errors="replace").lower()


def _dlq_messages(run: Run) -> list[Any]:
    reader = Consumer(
        {
            **run.broker.admin_config(),
            "group.id": f"sasl-dlq-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        reader.assign([TopicPartition(f"{run.topic}.dlq", 0, 0)])
        return [m for m in reader.consume(10, timeout=5) if m.error() is None]
    finally:
        reader.close()


def test_both_producers_the_consumer_and_the_dlq_work_with_their_own_users(
    run: Run, sim_url: str, database: str
) -> None:
    _, consumer_port = run.start(
        "consumer",
        "tickpipe_consumer",
        {
            **run.env("consumer"),
            "KAFKA_GROUP_ID": run.group,
            "DATABASE_URL": database,
            "BATCH_MAX_SECONDS": "0.2",
        },
    )
    wait_for(lambda: _ready(consumer_port), 60, "the consumer to be ready over SASL_SSL")
    stocks = _producer_env(run, sim_url, STOCKS, "trades,quotes")
    crypto = _producer_env(run, sim_url, CRYPTO, "trades,quotes")
    _, stocks_port = run.start(
        "producer-stocks", "tickpipe_producer_stocks", {**run.env("producer-stocks"), **stocks}
    )
    _, crypto_port = run.start(
        "producer-crypto", "tickpipe_producer_crypto", {**run.env("producer-crypto"), **crypto}
    )

    def feed_done() -> bool:
        sent = sim_sent(http_json(f"{sim_url}/stats"))
        return all(
            sent[(symbol, kind)] >= EVENTS_PER_SYMBOL
            for symbol in STOCKS + CRYPTO
            for kind in ("trade", "quote")
        )

    wait_for(feed_done, 60, "the simulator to send every tick")
    sent = sim_sent(http_json(f"{sim_url}/stats"))
    wait_for(lambda: db_counts(database) == sent, 60, f"the table to hold what was sent: {sent}")
    for port in (stocks_port, crypto_port):
        assert _ready(port), http_get(f"http://127.0.0.1:{port}/readyz")
        assert metric_sum(port, "tickpipe_producer_publish_errors_total") == 0

    # A poison message (written as the admin): the consumer's user sends it to the DLQ.
    poison = Producer(run.broker.admin_config())
    poison.produce(run.topic, key=b"AAPL", value=b"not json")
    assert poison.flush(30) == 0
    wait_for(
        lambda: metric_sum(consumer_port, "tickpipe_consumer_dlq_messages_total") >= 1,
        30,
        "the poison message to reach the DLQ",
    )
    letters = _dlq_messages(run)
    assert [m.value() for m in letters] == [b"not json"]
    assert _ready(consumer_port)


def _answers(port: int) -> bool:
    """The service's HTTP server is up (whatever /readyz says)."""
    try:
        http_get(f"http://127.0.0.1:{port}/readyz")
    except OSError:  # connection refused: not listening yet
        return False
    return True


def _assert_not_ready_but_running(service: Service, port: int, says: str) -> dict[str, Any]:
    wait_for(lambda: _log_has(service, says), 60, f"{service.name} to log {says!r}")
    # The Kafka client may log its refusal before the health server listens (a loaded machine
    # showed it): wait for the server, then judge what it says.
    wait_for(lambda: _answers(port), 60, f"{service.name} to serve /readyz")
    # Some seconds on, it still runs (no exit, so no crash loop) and still says not ready.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert service.process is not None
        assert service.process.poll() is None, service.log_tail()
        time.sleep(0.5)
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    assert status == 503, body
    return dict(json.loads(body))


def _check_refused(
    run: Run,
    sim_url: str,
    database: str,
    label: str,
    kafka: Callable[[str], dict[str, str]],
    says: str,
) -> None:
    """producer-stocks and the consumer, with the Kafka settings ``kafka(role)``, both refused
    by the broker: each keeps running, is not ready, and logs ``says``."""
    producer, producer_port = run.start(
        f"producer-stocks-{label}",
        "tickpipe_producer_stocks",
        {**kafka("producer-stocks"), **_producer_env(run, sim_url, STOCKS, "trades")},
    )
    details = _assert_not_ready_but_running(producer, producer_port, says)
    assert details["kafka_ok"] is False, details
    assert says in str(details.get("kafka_error")).lower(), details
    consumer, consumer_port = run.start(
        f"consumer-{label}",
        "tickpipe_consumer",
        {**kafka("consumer"), "KAFKA_GROUP_ID": f"{run.group}-{label}", "DATABASE_URL": database},
    )
    _assert_not_ready_but_running(consumer, consumer_port, says)


def test_a_wrong_password_is_a_clear_error_and_not_ready(
    run: Run, sim_url: str, database: str
) -> None:
    wrong = "wrong-" + secrets.token_hex(8)
    run.passwords["(wrong password)"] = wrong
    env = functools.partial(run.env, password=wrong)
    _check_refused(run, sim_url, database, "wrong-password", env, AUTH_FAILED)


def test_a_user_without_acls_is_a_clear_error_and_not_ready(
    run: Run, sim_url: str, database: str
) -> None:
    _check_refused(run, sim_url, database, "no-acl", lambda _: run.env("intruder"), NOT_AUTHORIZED)


def test_no_password_in_any_log_metrics_or_readiness_page(run: Run, broker: SaslBroker) -> None:
    assert len(run.services) >= 6, "runs after the tests that start the services"
    passwords = [*run.passwords.values(), broker.admin_password, *broker.passwords.values()]
    for service in run.services:
        text = service.log_path.read_text(errors="replace")
        for password in passwords:
            assert password not in text, f"{service.name}'s log shows a password"
    for service in run.services:
        port = service.env.get("HTTP_PORT") or service.env.get("SIM_PORT")
        if service.process is None or service.process.poll() is not None or port is None:
            continue
        for path in ("/metrics", "/readyz", "/healthz"):
            _, body = http_get(f"http://127.0.0.1:{port}{path}")
            for password in passwords:
                assert password.encode() not in body, f"{service.name}{path} shows a password"
