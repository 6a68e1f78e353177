"""The local CSV backup of every published tick, rotated by UTC day and asset class.

Layout: ``<backup_dir>/<asset_class>/<YYYY-MM-DD>.csv`` (day of the exchange timestamp), one
column per schema field. It is the producer's safety net: written before the tick is handed
to Kafka, so a broker outage loses nothing, and ``replay`` re-publishes any time range of it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tickpipe_common.schema import AssetClass, Tick
from tickpipe_common.timestamps import NANOS_PER_SECOND, utc_date

COLUMNS: tuple[str, ...] = tuple(field.alias or name for name, field in Tick.model_fields.items())
# Fields whose value is a list or object: stored as JSON text inside the CSV cell.
_JSON_COLUMNS = frozenset({"conditions", "bids", "asks"})


def _cells(tick: Tick) -> list[str]:
    data = tick.model_dump(mode="json", exclude_none=True)
    row = []
    for column in COLUMNS:
        value = data.get(column)
        if value is None:
            row.append("")
        elif column in _JSON_COLUMNS:
            row.append(json.dumps(value, separators=(",", ":")))
        else:
            # repr of a float round-trips exactly; str() of one is its repr.
            row.append(str(value).lower() if isinstance(value, bool) else str(value))
    return row


def tick_from_row(row: dict[str, str]) -> Tick:
    data: dict[str, Any] = {}
    for column, cell in row.items():
        if cell == "" or column not in COLUMNS:
            continue
        data[column] = json.loads(cell) if column in _JSON_COLUMNS else cell
    # Every other cell is text that pydantic's lax mode converts, except the literal version.
    if "schema_version" in data:
        data["schema_version"] = int(data["schema_version"])
    return Tick.model_validate(data)


def backup_path(backup_dir: Path, asset_class: AssetClass, day: str) -> Path:
    """Where the ticks of one asset class and UTC day live."""
    return backup_dir / asset_class.value / f"{day}.csv"


class CsvBackupWriter:
    """Appends ticks; keeps one open file per asset class and moves on when the day changes."""

    def __init__(self, backup_dir: Path) -> None:
        self._dir = backup_dir
        self._open: dict[AssetClass, tuple[str, IO[str]]] = {}
        self.rows_written = 0
        self.bytes_written = 0

    def write(self, tick: Tick) -> int:
        """Append one tick and flush it to the OS; returns the bytes written."""
        day = utc_date(tick.ts_ns)
        current = self._open.get(tick.asset_class)
        if current is None or current[0] != day:
            current = self._rotate(tick.asset_class, day)
        handle = current[1]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(_cells(tick))
        line = buffer.getvalue()
        handle.write(line)
        # Flushed per tick: a crash of this process loses nothing already handed to the OS.
        handle.flush()
        self.rows_written += 1
        self.bytes_written += len(line.encode())
        return len(line.encode())

    def _rotate(self, asset_class: AssetClass, day: str) -> tuple[str, IO[str]]:
        old = self._open.pop(asset_class, None)
        if old is not None:
            old[1].close()
        path = backup_path(self._dir, asset_class, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        is_new = not path.exists() or path.stat().st_size == 0
        handle = path.open("a", encoding="utf-8", newline="")
        if is_new:
            csv.writer(handle, lineterminator="\n").writerow(COLUMNS)
            handle.flush()
        entry = (day, handle)
        self._open[asset_class] = entry
        return entry

    def close(self) -> None:
        for _, handle in self._open.values():
            handle.close()
        self._open.clear()


def _days(since_ns: int, until_ns: int) -> list[str]:
    days = []
    day_ns = 86_400 * NANOS_PER_SECOND
    cursor = since_ns - since_ns % day_ns
    while cursor < until_ns:
        days.append(utc_date(cursor))
        cursor += day_ns
    return days


def read_backup(
    backup_dir: Path,
    asset_class: AssetClass,
    since_ns: int,
    until_ns: int,
    symbols: Iterable[str] | None = None,
) -> Iterator[Tick]:
    """Ticks with ``since_ns <= ts < until_ns`` in file order; skips a torn last line."""
    wanted = frozenset(symbols) if symbols else None
    for day in _days(since_ns, until_ns):
        path = backup_path(backup_dir, asset_class, day)
        if not path.exists():
            continue
        with path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if None in row.values() or None in row:
                    continue  # a line cut short by a crash mid-write
                tick = tick_from_row(row)
                if since_ns <= tick.ts_ns < until_ns and (wanted is None or tick.symbol in wanted):
                    yield tick
