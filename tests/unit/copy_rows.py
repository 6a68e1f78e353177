"""Reading back one binary COPY tuple that ``rows.tick_to_row`` encoded, independently of it.

Written from PostgreSQL's binary formats (``*_recv`` in its sources) with nothing but
``struct``, so that the tests check the encoder against the format, not against itself.
"""

from __future__ import annotations

import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tickpipe_consumer.rows import COLUMNS

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_TEXT_OID = 25


def decode_copy_row(data: bytes) -> dict[str, Any]:
    """Column name → Python value (None for NULL); fails on any trailing or missing byte."""
    (count,) = struct.unpack_from(">h", data, 0)
    assert count == len(COLUMNS), f"{count} fields, the table copy has {len(COLUMNS)}"
    at = 2
    values: dict[str, Any] = {}
    for name, pg_type in COLUMNS:
        (length,) = struct.unpack_from(">i", data, at)
        at += 4
        if length == -1:
            values[name] = None
            continue
        field = data[at : at + length]
        assert len(field) == length, f"{name}: truncated"
        at += length
        values[name] = _decode(pg_type, field)
    assert at == len(data), f"{len(data) - at} bytes after the last column"
    return values


def _decode(pg_type: str, field: bytes) -> Any:
    if pg_type == "uuid":
        return uuid.UUID(bytes=field)
    if pg_type == "timestamptz":
        (micros,) = struct.unpack(">q", field)
        return _PG_EPOCH + timedelta(microseconds=micros)
    if pg_type == "int8":
        return struct.unpack(">q", field)[0]
    if pg_type == "float8":
        return struct.unpack(">d", field)[0]
    if pg_type == "text":
        return field.decode()
    if pg_type == "bool":
        assert field in (b"\x00", b"\x01")
        return field == b"\x01"
    if pg_type == "jsonb":
        assert field[:1] == b"\x01", "jsonb binary format version 1"
        return json.loads(field[1:])
    if pg_type == "text[]":
        return _text_array(field)
    raise AssertionError(f"no decoder for {pg_type}")


def _text_array(field: bytes) -> list[str]:
    ndim, has_nulls, oid = struct.unpack_from(">iii", field, 0)
    assert (has_nulls, oid) == (0, _TEXT_OID)
    if ndim == 0:
        assert len(field) == 12
        return []
    assert ndim == 1
    size, lower = struct.unpack_from(">ii", field, 12)
    assert lower == 1
    at, items = 20, []
    for _ in range(size):
        (length,) = struct.unpack_from(">i", field, at)
        items.append(field[at + 4 : at + 4 + length].decode())
        at += 4 + length
    assert at == len(field)
    return items
