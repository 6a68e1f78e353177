"""Logging, backoff, Kafka configuration and the health server of the shared library."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from tickpipe_common.backoff import Backoff
from tickpipe_common.health import HealthServer
from tickpipe_common.kafka_config import consumer_config, masked, producer_config
from tickpipe_common.logging import RepeatFilter, configure_logging, get_logger
from tickpipe_common.settings import KafkaSettings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_have_the_agreed_fields() -> None:
    out = io.StringIO()
    configure_logging("producer-stocks", "INFO", "json", stream=out)
    get_logger("x").info("tick_published", symbol="AAPL", count=3)
    get_logger("x").debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["service"] == "producer-stocks"
    assert record["level"] == "info"
    assert record["event"] == "tick_published"
    assert (record["symbol"], record["count"]) == ("AAPL", 3)
    assert record["time"].endswith("+00:00")


@pytest.mark.usefixtures("restore_logging")
def test_text_logs_for_terminals() -> None:
    out = io.StringIO()
    configure_logging("consumer", "DEBUG", "text", stream=out)
    get_logger("x").warning("db_retry", attempt=2)
    assert " warning consumer db_retry attempt=2" in out.getvalue()


@pytest.mark.usefixtures("restore_logging")
def test_repeated_library_lines_are_rate_limited() -> None:
    out = io.StringIO()
    configure_logging("consumer", "INFO", "json", stream=out)
    kafka = logging.getLogger("librdkafka")
    for _ in range(50):
        kafka.error("127.0.0.1:9: Connect failed: Connection refused")
    kafka.error("a different message")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in lines] == [
        "127.0.0.1:9: Connect failed: Connection refused",
        "a different message",
    ]


def test_repeat_filter_holds_back_repeats_that_differ_only_in_numbers() -> None:
    repeat = RepeatFilter(window=10.0)

    def record(at: float, message: str, **fields: object) -> logging.LogRecord:
        rec = logging.makeLogRecord({"name": "tickpipe.kafka", "msg": message, **fields})
        rec.created = at
        return rec

    assert repeat.filter(record(100.0, "SASL authentication error (after 466ms)"))
    assert not repeat.filter(record(100.5, "SASL authentication error (after 355ms)"))
    assert repeat.filter(record(100.6, "kafka_error", code="_AUTHENTICATION"))
    assert not repeat.filter(record(100.7, "kafka_error", code="_AUTHENTICATION"))
    assert repeat.filter(record(100.8, "kafka_error", code="_TRANSPORT"))


def test_repeat_filter_reports_what_it_held_back() -> None:
    repeat = RepeatFilter(window=10.0)

    def record(at: float) -> logging.LogRecord:
        rec = logging.makeLogRecord({"name": "librdkafka", "msg": "down"})
        rec.created = at
        return rec

    assert repeat.filter(record(100.0))
    assert not repeat.filter(record(101.0))
    assert not repeat.filter(record(102.0))
    later = record(111.0)
    assert repeat.filter(later)
    assert getattr(later, "repeated", None) == 2


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(4.0 <= d <= 8.0 for d in delays[4:])
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=2.0, maximum=1.0)


def test_kafka_config_masks_secrets() -> None:
    settings = KafkaSettings(
        kafka_bootstrap_servers="b:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="producer-stocks",
        kafka_sasl_password=SecretStr("hunter2"),
        kafka_ssl_ca_location="/ca/ca.crt",
    )
    conf = producer_config(settings, "producer-stocks")
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["sasl.password"] == "hunter2"
    assert masked(conf)["sasl.password"] == "*****"
    assert "hunter2" not in json.dumps(masked(conf))
    consumer = consumer_config(settings, "consumer", "group")
    assert consumer["enable.auto.commit"] is False
    assert consumer["ssl.ca.location"] == "/ca/ca.crt"


def test_sasl_without_user_is_refused() -> None:
    settings = KafkaSettings(kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME"):
        producer_config(settings, "x")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_server_endpoints() -> None:
    registry = CollectorRegistry()
    Counter("tickpipe_test_things_total", "things", registry=registry).inc(3)
    state = {"ready": False}
    server = HealthServer(
        "127.0.0.1", 0, lambda: (state["ready"], {"why": "testing"}), registry=registry
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/healthz")[0] == 200
        status, body = _get(base + "/readyz")
        assert status == 503
        assert json.loads(body) == {"ready": False, "why": "testing"}
        state["ready"] = True
        assert _get(base + "/readyz")[0] == 200
        status, body = _get(base + "/metrics")
        assert status == 200
        assert b"tickpipe_test_things_total 3.0" in body
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()
