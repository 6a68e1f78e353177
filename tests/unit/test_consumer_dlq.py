"""DLQ letters: the headers that say why, and delivery that is confirmed before commits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import CollectorRegistry

from tickpipe_common.schema import RejectReason, TickRejected
from tickpipe_consumer.dlq import DlqPublisher, dlq_headers
from tickpipe_consumer.metrics import ConsumerMetrics

REJECTED = TickRejected(RejectReason.NOT_JSON, "expected value at line 1 column 1")


def test_headers_say_why_and_where_then_keep_the_originals() -> None:
    original = [
        ("content-type", b"application/json"),
        ("tickpipe-producer", b"producer-stocks"),
        ("empty", None),
    ]
    headers = dlq_headers(original, REJECTED, "market_ticks", 2, 41)
    assert headers == [
        ("tickpipe-dlq-reason", b"not_json"),
        ("tickpipe-dlq-detail", b"expected value at line 1 column 1"),
        ("tickpipe-dlq-source-topic", b"market_ticks"),
        ("tickpipe-dlq-source-partition", b"2"),
        ("tickpipe-dlq-source-offset", b"41"),
        *original,
    ]


def test_headers_of_an_earlier_dlq_trip_are_replaced() -> None:
    original = [
        ("tickpipe-dlq-reason", b"empty"),
        ("tickpipe-dlq-source-offset", b"1"),
        ("x", b"y"),
    ]
    headers = dlq_headers(original, REJECTED, "t", 0, 7)
    names = [name for name, _ in headers]
    assert names.count("tickpipe-dlq-reason") == 1
    assert dict(headers)["tickpipe-dlq-reason"] == b"not_json"
    assert dict(headers)["tickpipe-dlq-source-offset"] == b"7"
    assert headers[-1] == ("x", b"y")


def test_detail_is_bounded_and_utf8() -> None:
    long = TickRejected(RejectReason.SCHEMA_VIOLATION, "ä" * 5000)
    detail = dict(dlq_headers(None, long, "t", 0, 0))["tickpipe-dlq-detail"]
    assert isinstance(detail, bytes)
    assert len(detail) <= 1024
    assert detail.endswith(b"...")


def test_dict_headers_are_accepted() -> None:
    headers = dlq_headers({"a": "b"}, REJECTED, "t", 0, 0)
    assert headers[-1] == ("a", b"b")


class FakeProducer:
    """Records produce() calls; delivery reports are handed out on flush()."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.reports: list[tuple[Callable[[KafkaError | None, Message], None], Any]] = []
        self.fail_next = 0
        self.full_next = 0

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.full_next:
            self.full_next -= 1
            raise BufferError("queue full")
        self.sent.append({"topic": topic, **kwargs})
        self.reports.append((kwargs["on_delivery"], topic))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        reports, self.reports = self.reports, []
        for callback, _ in reports:
            if self.fail_next:
                self.fail_next -= 1
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), Message())
            else:
                callback(None, Message())
        return 0


def _message() -> Message:
    return Message(
        topic="ticks",
        partition=1,
        offset=9,
        key=b"AAPL",
        value=b"{not json",
        headers=[("tickpipe-producer", b"p")],
    )


def test_publisher_sends_original_bytes_and_counts_delivered() -> None:
    producer = FakeProducer()
    registry = CollectorRegistry()
    dlq = DlqPublisher(cast(Producer, producer), "ticks.dlq", ConsumerMetrics(registry))
    dlq.publish(_message(), REJECTED)
    assert dlq.pending == 1
    sent = producer.sent[0]
    assert (sent["topic"], sent["key"], sent["value"]) == ("ticks.dlq", b"AAPL", b"{not json")
    assert dict(sent["headers"])["tickpipe-dlq-source-offset"] == b"9"
    assert dlq.flush(1.0) is True
    assert dlq.pending == 0
    count = registry.get_sample_value(
        "tickpipe_consumer_dlq_messages_total", {"reason": "not_json"}
    )
    assert count == 1


def test_failed_delivery_is_resent_and_not_reported_done() -> None:
    producer = FakeProducer()
    producer.fail_next = 1
    producer.full_next = 1  # and the first produce finds the queue full
    dlq = DlqPublisher(cast(Producer, producer), "ticks.dlq", ConsumerMetrics(CollectorRegistry()))
    dlq.publish(_message(), REJECTED)
    assert dlq.flush(1.0) is False  # delivery failed: the offset must not be committed yet
    assert dlq.pending == 1
    assert dlq.flush(1.0) is True  # re-sent and delivered
    assert len(producer.sent) == 2
    assert producer.sent[0]["value"] == producer.sent[1]["value"]
