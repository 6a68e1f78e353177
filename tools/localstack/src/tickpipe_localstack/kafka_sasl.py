"""The local stack's opt-in SASL_SSL Kafka broker: its TLS material, users and ACLs.

``deploy/local/stack.sh start kafka-sasl`` runs a second, separate Kafka (its own folder
``<run folder>/kafka-sasl``, its own ports from ``TICKPIPE_KAFKA_SASL_PORT``), secured the way
the Helm chart's Strimzi cluster is: SASL_SSL with SCRAM-SHA-512, a CA of its own, the
StandardAuthorizer denying whatever no ACL allows, and one user per service holding only the
ACLs the chart's KafkaUsers give it (``CHART_ACLS``). The plain local broker is untouched.

The steps, each idempotent (the script runs them in this order):

- ``prepare``: passwords (``credentials.json``, mode 0600), a CA and a broker certificate made
  with ``openssl`` (``tls/``), and ``server.properties`` from
  ``deploy/local/kafka/server-sasl.properties.in``;
- ``scram``: the admin's credential in the form the storage format's ``--add-scram`` takes
  (the only way to have a first SCRAM user on a KRaft cluster);
- ``provision``: once the broker runs, as the admin: the topics, the services' users and their
  ACLs.

Tests use the same pieces (``SaslBroker``, ``upsert_users``, ``service_acls``) to make users of
their own, with or without ACLs. Passwords live only in ``credentials.json`` and the broker's
``server.properties``; nothing here prints one, except ``scram`` to the script that formats.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from tickpipe_localstack.ports import REPO

TEMPLATE = REPO / "deploy" / "local" / "kafka" / "server-sasl.properties.in"
ADMIN_USER = "tickpipe-admin"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
TICKS_TOPIC = "market_ticks"
DLQ_TOPIC = "market_ticks.dlq"
CONSUMER_GROUP = "tickpipe-consumer"
SERVICES = ("producer-stocks", "producer-crypto", "consumer")

# What each service may do, as the chart's KafkaUsers say (templates/kafka-topics-users.yaml):
# (resource type, which name, operations). Producers need no IdempotentWrite on the cluster
# since Kafka 3.0 (KIP-679): Write on the topic suffices, and the integration test proves it.
CHART_ACLS: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "producer": (("topic", "ticks", ("Describe", "Write")),),
    "consumer": (
        ("topic", "ticks", ("Describe", "Read")),
        ("group", "group", ("Read",)),
        ("topic", "dlq", ("Describe", "Write")),
    ),
}


@dataclass(frozen=True)
class SaslBroker:
    """How to reach a running SASL broker, and the passwords of its users."""

    bootstrap: str
    ca_location: str
    admin_password: str
    passwords: Mapping[str, str]  # service → its user's password (user name = service name)

    def client_env(self, user: str, password: str) -> dict[str, str]:
        """The services' settings (KAFKA_*) for connecting as ``user``."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": user,
            "KAFKA_SASL_PASSWORD": password,
            "KAFKA_SSL_CA_LOCATION": self.ca_location,
        }

    def admin_config(self) -> dict[str, Any]:
        """librdkafka configuration of an admin client (a super user)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": ADMIN_USER,
            "sasl.password": self.admin_password,
            "ssl.ca.location": self.ca_location,
            "socket.timeout.ms": 10_000,
            "log_level": 0,
        }


def credentials_path(folder: Path) -> Path:
    return folder / "credentials.json"


def load(folder: Path) -> SaslBroker:
    """The broker of ``folder`` (after ``prepare``)."""
    data = json.loads(credentials_path(folder).read_text())
    return SaslBroker(
        bootstrap=data["bootstrap"],
        ca_location=str(folder / "tls" / "ca.pem"),
        admin_password=data["admin_password"],
        passwords=data["passwords"],
    )


# ------------------------------------------------------------------------------ prepare


def prepare(folder: Path, port: int, controller_port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = _credentials(folder, port)
    tls = folder / "tls"
    _make_tls(tls, data["keystore_password"])
    text = TEMPLATE.read_text()
    for name, value in {
        "KAFKA_PORT": str(port),
        "CONTROLLER_PORT": str(controller_port),
        "ADMIN_USER": ADMIN_USER,
        "ADMIN_PASSWORD": data["admin_password"],
        "KEYSTORE_PASSWORD": data["keystore_password"],
        "TLS_DIR": str(tls),
        "DATA_DIR": str(folder / "data"),
    }.items():
        text = text.replace(f"@{name}@", value)
    _write_private(folder / "server.properties", text)


def _credentials(folder: Path, port: int) -> dict[str, Any]:
    """Passwords made once and kept (the broker's storage holds the admin's)."""
    path = credentials_path(folder)
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
    else:
        data = {
            "admin_password": secrets.token_hex(16),
            "keystore_password": secrets.token_hex(16),
            "passwords": {service: secrets.token_hex(16) for service in SERVICES},
        }
    data["bootstrap"] = f"127.0.0.1:{port}"
    _write_private(path, json.dumps(data, indent=2) + "\n")
    return data


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def _make_tls(tls: Path, keystore_password: str) -> None:
    """A CA, and a broker certificate it signs for localhost and 127.0.0.1 (made once)."""
    if (tls / "broker.p12").exists() and (tls / "ca.pem").exists():
        return
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    (tls / "broker.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    ca_subject = "/CN=tickpipe local stack CA"
    steps: list[list[str]] = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "3650", "-subj", ca_subject, "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "825", "-extfile", "broker.ext", "-out", "broker.pem"],
        ["pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
         "-name", "broker", "-out", "broker.p12", "-passout", "env:TICKPIPE_KEYSTORE_PASSWORD"],
    ]  # fmt: skip
    env = {**os.environ, "TICKPIPE_KEYSTORE_PASSWORD": keystore_password}
    for args in steps:
        done = subprocess.run(  # noqa: S603 - fixed arguments, no input from outside
            ["openssl", *args],  # noqa: S607 - the system's openssl, found on PATH
            cwd=tls,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")
    for name in ("ca.key", "broker.key", "broker.p12"):
        (tls / name).chmod(0o600)


def scram_spec(folder: Path) -> str:
    """The admin's credential for ``kafka.tools.StorageTool format --add-scram``."""
    password = json.loads(credentials_path(folder).read_text())["admin_password"]
    return f"{MECHANISM}=[name={ADMIN_USER},password={password}]"


# ------------------------------------------------------------------------------ provision


def service_acls(
    service: str,
    user: str,
    ticks_topic: str = TICKS_TOPIC,
    dlq_topic: str = DLQ_TOPIC,
    group: str = CONSUMER_GROUP,
) -> list[AclBinding]:
    """The chart's ACLs of ``service`` (a producer or the consumer), granted to ``user``."""
    names = {"ticks": ticks_topic, "dlq": dlq_topic, "group": group}
    kind = "consumer" if service == "consumer" else "producer"
    return [
        AclBinding(
            ResourceType[resource.upper()],
            names[which],
            ResourcePatternType.LITERAL,
            f"User:{user}",
            "*",
            AclOperation[operation.upper()],
            AclPermissionType.ALLOW,
        )
        for resource, which, operations in CHART_ACLS[kind]
        for operation in operations
    ]


def upsert_users(admin: AdminClient, passwords: Mapping[str, str]) -> None:
    """Create (or reset the password of) SCRAM-SHA-512 users: ``{user: password}``."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(u, info, p.encode()) for u, p in passwords.items()
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)


def grant(admin: AdminClient, bindings: Sequence[AclBinding]) -> None:
    for future in admin.create_acls(list(bindings), request_timeout=30).values():
        future.result(timeout=30)


def create_topics(admin: AdminClient, partitions: Mapping[str, int]) -> None:
    """Create the topics that do not exist yet, and wait until each has a leader."""
    present = admin.list_topics(timeout=10).topics
    missing = [NewTopic(n, num_partitions=p) for n, p in partitions.items() if n not in present]
    if missing:
        for future in admin.create_topics(missing, operation_timeout=30).values():
            future.result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(
            n in topics and topics[n].partitions and topics[n].error is None for n in partitions
        ):
            return
        time.sleep(0.2)
    raise RuntimeError(f"topics {sorted(partitions)} have no leader after 60 s")


def wait_until_answering(admin: AdminClient, pid: int, timeout: float) -> None:
    """Until the admin can list the cluster's topics over SASL_SSL (or the broker exited)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            raise RuntimeError("the SASL broker process exited") from None
        try:
            if admin.list_topics(timeout=3).brokers:
                return
        except Exception as exc:  # noqa: BLE001 - starting up: any error means "not yet"
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the SASL broker did not answer within {timeout:.0f} s: {last}")


def provision(folder: Path, pid: int, timeout: float) -> None:
    broker = load(folder)
    admin = AdminClient(broker.admin_config())
    wait_until_answering(admin, pid, timeout)
    create_topics(admin, {TICKS_TOPIC: 3, DLQ_TOPIC: 1})
    upsert_users(admin, dict(broker.passwords))
    grant(admin, [b for s in SERVICES for b in service_acls(s, s)])
    print(  # noqa: T201 - the script's progress line
        f"users {', '.join(SERVICES)} with the chart's ACLs; topics {TICKS_TOPIC}, {DLQ_TOPIC}"
    )


def main(argv: Sequence[str]) -> int:
    usage = (
        "usage: python -m tickpipe_localstack.kafka_sasl "
        "prepare FOLDER PORT CONTROLLER_PORT | scram FOLDER | provision FOLDER PID TIMEOUT"
    )
    if len(argv) < 2:
        print(usage, file=sys.stderr)  # noqa: T201
        return 2
    command, folder = argv[0], Path(argv[1])
    try:
        if command == "prepare" and len(argv) == 4:
            prepare(folder, int(argv[2]), int(argv[3]))
        elif command == "scram" and len(argv) == 2:
            print(scram_spec(folder))  # noqa: T201 - read by stack.sh, never logged
        elif command == "provision" and len(argv) == 4:
            provision(folder, int(argv[2]), float(argv[3]))
        else:
            print(usage, file=sys.stderr)  # noqa: T201
            return 2
    except (RuntimeError, OSError, KafkaException) as exc:
        print(f"kafka-sasl {command}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
