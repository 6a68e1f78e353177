from __future__ import annotations

import pytest

from tickpipe_common.timestamps import (
    format_rfc3339_ns,
    ns_to_datetime,
    parse_rfc3339_ns,
    utc_date,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2024-03-01T14:30:00.123456789Z", 1_709_303_400_123_456_789),
        ("2024-03-01T14:30:00.1Z", 1_709_303_400_100_000_000),
        ("2024-03-01T16:30:00.000000001+02:00", 1_709_303_400_000_000_001),
        ("2024-03-01T09:30:00-05:00", 1_709_303_400_000_000_000),
    ],
)
def test_parse_keeps_every_nanosecond(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "2024-03-01", "2024-02-30T00:00:00Z", "2024-03-01T14:30:00.1234567891Z", "x"]
)
def test_parse_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_rfc3339_ns(bad)


def test_format_round_trips() -> None:
    for value in (1, 1_709_303_400_123_456_789, 4_102_444_800_999_999_999):
        text = format_rfc3339_ns(value)
        assert len(text.split(".")[1]) == 10  # nine digits and the Z
        assert parse_rfc3339_ns(text) == value


def test_datetime_truncates_to_microseconds() -> None:
    dt = ns_to_datetime(1_709_303_400_123_456_999)
    assert dt.microsecond == 123_456
    assert dt.isoformat() == "2024-03-01T14:30:00.123456+00:00"


def test_utc_date() -> None:
    assert utc_date(parse_rfc3339_ns("2024-03-01T23:59:59.999999999Z")) == "2024-03-01"
    assert utc_date(parse_rfc3339_ns("2024-03-02T00:00:00Z")) == "2024-03-02"
