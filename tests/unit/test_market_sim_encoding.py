"""Wire encoding: msgpack Timestamp with nanoseconds, JSON with nine fractional digits."""

from __future__ import annotations

import json
import re

import msgpack
import pytest

from tickpipe_common.timestamps import parse_rfc3339_ns
from tickpipe_market_sim.clock import EpochNanos
from tickpipe_market_sim.encoding import Encoding, decode_frame, encode_frame, encoding_for
from tickpipe_market_sim.protocol import ProtocolError

NS = 1_700_000_000_123_456_789
TRADE = {"T": "t", "S": "AAPL", "i": 1, "p": 190.12, "s": 100, "c": ["@"], "t": EpochNanos(NS)}


def test_msgpack_frame_carries_a_timestamp_with_nanoseconds() -> None:
    frame = encode_frame([TRADE, {**TRADE, "i": 2}], Encoding.MSGPACK)
    assert isinstance(frame, bytes)
    decoded = msgpack.unpackb(frame)
    assert [m["i"] for m in decoded] == [1, 2], "several messages in one array"
    stamp = decoded[0]["t"]
    assert isinstance(stamp, msgpack.Timestamp)
    assert (stamp.seconds, stamp.nanoseconds) == (1_700_000_000, 123_456_789)
    assert stamp.to_unix_nano() == NS
    assert decoded[0]["p"] == 190.12
    assert decoded[0]["S"] == "AAPL"


def test_json_frame_carries_rfc3339_with_nine_digits() -> None:
    frame = encode_frame([TRADE], Encoding.JSON)
    assert isinstance(frame, str)
    decoded = json.loads(frame)
    assert decoded[0]["t"] == "2023-11-14T22:13:20.123456789Z"
    assert parse_rfc3339_ns(decoded[0]["t"]) == NS
    whole_second = json.loads(
        encode_frame([{"t": EpochNanos(1_700_000_000 * 10**9)}], Encoding.JSON)
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000000Z", whole_second[0]["t"])


@pytest.mark.parametrize("encoding", list(Encoding))
def test_unknown_types_are_refused(encoding: Encoding) -> None:
    with pytest.raises(TypeError):
        encode_frame([{"x": object()}], encoding)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/msgpack", Encoding.MSGPACK),
        ("Application/MsgPack; charset=binary", Encoding.MSGPACK),
        ("application/json", Encoding.JSON),
        ("", Encoding.JSON),
        (None, Encoding.JSON),
    ],
)
def test_encoding_follows_the_handshake_content_type(
    content_type: str | None, expected: Encoding
) -> None:
    assert encoding_for(content_type) is expected


def test_decode_client_messages() -> None:
    auth = {"action": "auth", "key": "k", "secret": "s"}
    assert decode_frame(msgpack.packb(auth), Encoding.MSGPACK) == auth
    assert decode_frame(json.dumps(auth), Encoding.MSGPACK) == auth, "text is always JSON"
    assert decode_frame(json.dumps(auth), Encoding.JSON) == auth
    assert decode_frame(json.dumps(auth).encode(), Encoding.JSON) == auth


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("{not json", Encoding.JSON),
        (b"\xff\xfe", Encoding.JSON),
        (b"\xc1", Encoding.MSGPACK),  # a byte msgpack never uses
        (msgpack.packb({"a": 1}) + b"\x01", Encoding.MSGPACK),  # trailing data
        (b"\x81\x91\x01\x01", Encoding.MSGPACK),  # a map whose key is an array
    ],
)
def test_undecodable_frames_are_invalid_syntax(data: str | bytes, encoding: Encoding) -> None:
    with pytest.raises(ProtocolError) as excinfo:
        decode_frame(data, encoding)
    assert int(excinfo.value.code) == 400
