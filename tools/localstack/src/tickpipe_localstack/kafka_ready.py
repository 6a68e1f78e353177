"""``python -m tickpipe_localstack.kafka_ready BOOTSTRAP PID TIMEOUT TOPIC:PARTITIONS...``

What ``stack.sh start kafka`` waits for: the broker answers metadata requests (while its
process ``PID`` lives), the pipeline's topics exist (made when missing, replication 1), and
every partition has a leader. Exit 0 when all holds within ``TIMEOUT`` seconds, else 1 with
the reason on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence

from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from tickpipe_localstack.supervise import NotReady, pid_alive, wait_until

BROKER_MARKER = "kafka.Kafka"  # in the broker's command line


def _metadata(admin: AdminClient) -> ClusterMetadata | None:
    try:
        metadata = admin.list_topics(timeout=3)
    except Exception:  # noqa: BLE001 - starting up: any error means "not yet"
        return None
    return metadata if metadata.brokers else None


def _create_missing(admin: AdminClient, wanted: Mapping[str, int], present: set[str]) -> None:
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=1)
        for name, partitions in wanted.items()
        if name not in present
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=30).items():
        try:
            future.result(timeout=60)
            print(f"created topic {name} ({wanted[name]} partitions)")  # noqa: T201
        except Exception as exc:  # reported, and fatal unless it exists already
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise NotReady(f"could not create topic {name}: {exc}") from exc


def _leaders(admin: AdminClient, wanted: Mapping[str, int]) -> bool:
    metadata = _metadata(admin)
    if metadata is None:
        return False
    topics = metadata.topics
    return all(
        name in topics
        and topics[name].error is None
        and len(topics[name].partitions) > 0
        and all(p.leader >= 0 for p in topics[name].partitions.values())
        for name in wanted
    )


def wait_ready(bootstrap: str, pid: int, timeout: float, wanted: Mapping[str, int]) -> None:
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 5000})

    def alive() -> bool:
        return pid_alive(pid, BROKER_MARKER)

    wait_until(lambda: _metadata(admin) is not None, timeout, "the broker to answer", alive=alive)
    metadata = _metadata(admin)
    _create_missing(admin, wanted, set(metadata.topics) if metadata else set())
    left = max(1.0, deadline - time.monotonic())
    wait_until(lambda: _leaders(admin, wanted), left, "leaders of the topics", alive=alive)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3:
        print(__doc__.splitlines()[0], file=sys.stderr)  # noqa: T201
        return 2
    bootstrap, pid, timeout = argv[0], int(argv[1]), float(argv[2])
    wanted = {name: int(n) for name, _, n in (spec.partition(":") for spec in argv[3:])}
    try:
        wait_ready(bootstrap, pid, timeout, wanted)
    except NotReady as exc:
        print(f"Kafka on {bootstrap}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
