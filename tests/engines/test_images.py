"""The four service images, run on a real Docker engine the way the chart and compose run them.

Each container is hardened as in deploy/compose/compose.yaml and the chart's pods: a read-only
root filesystem, a tmpfs /tmp, every capability dropped, no-new-privileges, uid 10001. They
run together with what they need (the stand-in Kafka and PostgreSQL, the simulator as the
feed) on a network of their own, so every one does its real work. The module's fixture runs
the whole life once (start, healthy, rows flowing, SIGTERM) and records what it saw; the tests
then check, per image: it went healthy; SIGTERM ended it with exit code 0 within the grace
period compose gives it; every log line is a JSON object; nothing was written outside /tmp
and the backup volume (``docker diff``); it runs as 10001; it carries only the packages its
service imports.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.engines.docker_support import (
    HARDENED,
    TICKPIPE_SERVICES,
    build_script_tags,
    docker,
    health,
    image_size_mb,
    inspect,
    non_json_lines,
    require_engine_and_images,
    service_image,
)
from tests.processes import wait_for

BACKUP = "/var/lib/tickpipe/backup"
# compose.yaml's stop_grace_period of each service: SIGTERM, then this long before SIGKILL.
GRACE_SECONDS = {"producer-stocks": 30, "producer-crypto": 30, "consumer": 30, "market-sim": 15}
# The image HEALTHCHECK runs every 15 s after a 30 s start period; a loaded machine is slower.
HEALTHY_WITHIN = 120
PASSWORD = "engines-test-password"  # noqa: S105 - a throw-away database of this test

# What each service imports, and what its image must therefore not carry.
MUST_NOT_CARRY = {
    "consumer": ("alpaca", "pandas", "numpy", "websockets", "msgpack"),
    "market-sim": ("alpaca", "pandas", "numpy", "confluent_kafka", "psycopg"),
    "producer-stocks": ("psycopg",),
    "producer-crypto": ("psycopg",),
}
MUST_CARRY = {
    "consumer": ("tickpipe_consumer", "confluent_kafka", "psycopg"),
    "market-sim": ("tickpipe_market_sim", "websockets", "msgpack"),
    # alpaca-py imports pandas and numpy at start-up (alpaca.data.models): they stay here
    "producer-stocks": ("tickpipe_producer_stocks", "alpaca", "confluent_kafka", "pandas"),
    "producer-crypto": ("tickpipe_producer_crypto", "alpaca", "confluent_kafka", "pandas"),
}


@dataclass
class Observed:
    healthy_after: float | None = None
    stop_seconds: float = 0.0
    exit_code: int | None = None
    oom_killed: bool = False
    logs: str = ""
    changes: list[str] = field(default_factory=list)
    user: str = ""


class Run:
    """The containers of one run, named with a random suffix, removed at the end."""

    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.network = f"tickpipe-engines-{self.suffix}"
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def name(self, service: str) -> str:
        return f"tickpipe-engines-{service}-{self.suffix}"

    def start(self, service: str, image: str, *args: str, env: dict[str, str]) -> str:
        name = self.name(service)
        environment = [f"--env={k}={v}" for k, v in env.items()]
        docker(
            "run",
            "--detach",
            f"--name={name}",
            f"--network={self.network}",
            f"--network-alias={service}",
            *environment,
            *args,
            image,
        )
        self.containers.append(name)
        return name

    def remove(self) -> None:
        for name in reversed(self.containers):
            docker("rm", "--force", "--volumes", name, check=False)
        for volume in self.volumes:
            docker("volume", "rm", "--force", volume, check=False)
        docker("network", "rm", self.network, check=False)


def kafka_env() -> dict[str, str]:
    """One KRaft node, as compose.yaml configures its Kafka (containers' listener only)."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "CLUSTER_ID": "yToSHbEcQQSh9vkkMs9QFg",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@kafka:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
    }


def kafka_answers(container: str) -> bool:
    probe = docker(
        "exec",
        container,
        "bash",
        "-c",
        "KAFKA_HEAP_OPTS=-Xmx64m /opt/kafka/bin/kafka-broker-api-versions.sh"
        " --bootstrap-server localhost:9092",
        check=False,
        timeout=60,
    )
    return probe.returncode == 0


def postgres_answers(container: str) -> bool:
    probe = docker(
        "exec", container, "pg_isready", "-q", "-h", "127.0.0.1", "-U", "tickpipe", check=False
    )
    return probe.returncode == 0


def stored_rows(container: str) -> int:
    out = docker(
        "exec",
        container,
        "psql",
        "-X",
        "-At",
        "-U",
        "tickpipe",
        "-d",
        "marketdata",
        "-c",
        "SELECT count(*) FROM market_ticks",
        check=False,
    )
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


@pytest.fixture(scope="module")
def observed() -> Iterator[dict[str, Observed]]:
    require_engine_and_images()
    tags = build_script_tags()
    run = Run()
    docker("network", "create", run.network)
    try:
        kafka = run.start("kafka", tags["kafka"], env=kafka_env())
        postgres = run.start(
            "timescaledb",
            tags["postgres"],
            env={
                "POSTGRES_USER": "tickpipe",
                "POSTGRES_PASSWORD": PASSWORD,
                "POSTGRES_DB": "marketdata",
            },
        )
        wait_for(lambda: kafka_answers(kafka), 180, "the stand-in Kafka to answer")
        docker(
            "exec",
            kafka,
            "/opt/kafka/bin/kafka-topics.sh",
            "--bootstrap-server=kafka:9092",
            "--create",
            "--if-not-exists",
            "--topic=market_ticks",
            "--partitions=3",
            "--replication-factor=1",
        )
        wait_for(lambda: postgres_answers(postgres), 120, "the stand-in PostgreSQL to answer")

        common = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
        backup = f"tickpipe-engines-backup-{run.suffix}"
        run.volumes.append(backup)
        started = time.monotonic()
        names = {
            "market-sim": run.start(
                "market-sim",
                service_image("market-sim"),
                *HARDENED,
                env={**common, "SIM_HOST": "0.0.0.0", "SIM_PORT": "8765"},  # noqa: S104
            ),
            "consumer": run.start(
                "consumer",
                service_image("consumer"),
                *HARDENED,
                env={
                    **common,
                    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                    "DATABASE_URL": f"postgresql://tickpipe:{PASSWORD}@timescaledb:5432/marketdata",
                    "APPLY_MIGRATIONS": "true",
                },
            ),
        }
        for producer in ("producer-stocks", "producer-crypto"):
            names[producer] = run.start(
                producer,
                service_image(producer),
                *HARDENED,
                f"--volume={backup}:{BACKUP}",
                env={
                    **common,
                    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                    "ALPACA_DATA_STREAM_URL": "ws://market-sim:8765",
                    "BACKUP_DIR": BACKUP,
                },
            )

        seen = {service: Observed() for service in TICKPIPE_SERVICES}

        def all_healthy() -> bool:
            for service, name in names.items():
                status = health(name)
                assert status not in ("unhealthy", "exited", "dead"), (
                    f"{service} is {status}:\n{docker('logs', name, check=False).stderr[-3000:]}"
                )
                if status == "healthy" and seen[service].healthy_after is None:
                    seen[service].healthy_after = time.monotonic() - started
            return all(o.healthy_after is not None for o in seen.values())

        wait_for(all_healthy, HEALTHY_WITHIN, "every service container to be healthy")
        # Real work before the stop: ticks from the simulator through both producers and
        # Kafka reach the table, so SIGTERM meets a service in the middle of its work.
        wait_for(lambda: stored_rows(postgres) > 0, 120, "rows in market_ticks")

        # Stop in the order a rollout would: the producers, the consumer, then the feed.
        for service in ("producer-stocks", "producer-crypto", "consumer", "market-sim"):
            name = names[service]
            t0 = time.monotonic()
            docker("stop", f"--time={GRACE_SECONDS[service]}", name, timeout=120)
            seen[service].stop_seconds = time.monotonic() - t0
            state = inspect(name)
            seen[service].exit_code = int(state["State"]["ExitCode"])
            seen[service].oom_killed = bool(state["State"]["OOMKilled"])
            seen[service].user = str(state["Config"]["User"])
            logs = docker("logs", name)
            seen[service].logs = logs.stdout + logs.stderr
            seen[service].changes = docker("diff", name).stdout.splitlines()
        yield seen
    finally:
        run.remove()


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_the_container_goes_healthy(observed: dict[str, Observed], service: str) -> None:
    assert observed[service].healthy_after is not None


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_sigterm_ends_it_with_exit_code_0_within_the_grace_period(
    observed: dict[str, Observed], service: str
) -> None:
    seen = observed[service]
    assert seen.exit_code == 0, f"exit code {seen.exit_code}:\n{seen.logs[-3000:]}"
    assert not seen.oom_killed
    # docker stop sends SIGKILL at the end of the grace period: well before it, or it was killed
    assert seen.stop_seconds < GRACE_SECONDS[service], f"took {seen.stop_seconds:.1f}s"


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_every_log_line_is_json(observed: dict[str, Observed], service: str) -> None:
    logs = observed[service].logs
    assert logs.strip(), "the service logged something"
    assert non_json_lines(logs) == []


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_nothing_is_written_outside_tmp_and_the_backup_volume(
    observed: dict[str, Observed], service: str
) -> None:
    allowed = ("/tmp", BACKUP)  # noqa: S108 - paths inside the container
    outside = [c for c in observed[service].changes if not c.split(" ", 1)[1].startswith(allowed)]
    assert outside == []


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_it_ran_as_uid_10001(observed: dict[str, Observed], service: str) -> None:
    assert observed[service].user == "10001:10001"
    image_user = docker(
        "image", "inspect", "--format", "{{.Config.User}}", service_image(service)
    ).stdout.strip()
    assert image_user == "10001:10001", "the image itself runs as 10001 without --user"


@pytest.mark.parametrize("service", TICKPIPE_SERVICES)
def test_the_image_carries_only_what_its_service_imports(service: str) -> None:
    require_engine_and_images()
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    names = (*MUST_CARRY[service], *MUST_NOT_CARRY[service])
    out = docker(
        "run",
        "--rm",
        *HARDENED,
        "--entrypoint=python",
        service_image(service),
        "-c",
        probe,
        *names,
    ).stdout
    found = json.loads(out)
    assert [m for m in MUST_CARRY[service] if not found[m]] == []
    assert [m for m in MUST_NOT_CARRY[service] if found[m]] == []
    # reported in the test log (make test-deploy prints the sizes of every image too)
    print(f"{service_image(service)}: {image_size_mb(service_image(service)):.0f} MB")  # noqa: T201
