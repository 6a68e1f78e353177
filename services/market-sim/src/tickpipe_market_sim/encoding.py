"""Frames on the wire: msgpack or JSON, chosen per connection at the handshake.

Alpaca speaks msgpack to clients whose handshake says ``Content-Type: application/msgpack``
(alpaca-py always does) and JSON text otherwise. A frame is always an array of messages.
Timestamps travel as the msgpack Timestamp extension type (-1) with full nanoseconds, or
as RFC 3339 text with nine fractional digits.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum

import msgpack

from tickpipe_common.timestamps import format_rfc3339_ns
from tickpipe_market_sim.clock import EpochNanos
from tickpipe_market_sim.protocol import ErrorCode, Message, ProtocolError

MSGPACK_CONTENT_TYPE = "application/msgpack"


class Encoding(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"


def encoding_for(content_type: str | None) -> Encoding:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return Encoding.MSGPACK if media_type == MSGPACK_CONTENT_TYPE else Encoding.JSON


def _msgpack_default(obj: object) -> object:
    if isinstance(obj, EpochNanos):
        return msgpack.Timestamp.from_unix_nano(obj.ns)
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _json_default(obj: object) -> object:
    if isinstance(obj, EpochNanos):
        return format_rfc3339_ns(obj.ns)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_frame(messages: Sequence[Message], encoding: Encoding) -> bytes | str:
    """Binary frame for msgpack, text frame for JSON (as Alpaca sends them)."""
    if encoding is Encoding.MSGPACK:
        packed: bytes = msgpack.packb(list(messages), default=_msgpack_default)
        return packed
    return json.dumps(list(messages), default=_json_default, separators=(",", ":"))


def decode_frame(data: str | bytes, encoding: Encoding) -> object:
    """A client's message; anything undecodable is Alpaca's 400 "invalid syntax".

    Text frames are JSON whatever the connection's encoding; binary frames are msgpack on
    a msgpack connection and UTF-8 JSON otherwise.
    """
    try:
        if isinstance(data, bytes) and encoding is Encoding.MSGPACK:
            decoded: object = msgpack.unpackb(data)
            return decoded
        parsed: object = json.loads(data)
        return parsed
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        # json.JSONDecodeError, UnicodeDecodeError and msgpack's ExtraData/FormatError are
        # ValueErrors; msgpack raises TypeError for unhashable map keys.
        raise ProtocolError(ErrorCode.INVALID_SYNTAX) from exc
