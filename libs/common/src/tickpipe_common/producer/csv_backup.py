"""The local CSV backup of every published tick: the producer's safety net and spill buffer.

Layout: ``<backup_dir>/<asset_class>/<YYYY-MM-DD>.csv``, one column per schema field
(``wire.COLUMNS``). The day is the UTC day the producer *received* the rows, not their exchange
day: the files are then written strictly in arrival order, one after the other, which the spill
cursor relies on (it re-publishes file after file), and a finished day is never written again,
so gzipping it cannot race the writer. Around midnight ticks of both days interleave (a minute
bar is stamped with its start and arrives after it), and backfilled ticks can be much older, so
``read_rows`` reads the files of one day either side of the asked range and filters by the
exchange timestamp. Finished days are gzipped (``<day>.csv.gz``, still read by ``replay``; should
a day be written again after all — a clock set back —, its new rows are added to the archive as
a second gzip member, never over it) and days older than ``BACKUP_RETENTION_DAYS`` are deleted.

The sink writes each batch of rows with one ``os.write`` on an unbuffered descriptor, before
the batch goes to Kafka: whatever Kafka was handed is with the operating system, so a SIGKILL
of the producer loses none of it. A failed write (disk full) is cut back to the last whole row,
so the file never holds a torn row, and the caller counts it and carries on publishing.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from tickpipe_common.logging import get_logger
from tickpipe_common.producer.wire import (
    COLUMNS,
    LEGACY_COLUMNS,
    document_from_cells,
    header_line,
)
from tickpipe_common.schema import AssetClass, Tick
from tickpipe_common.timestamps import NANOS_PER_SECOND, parse_rfc3339_ns, utc_date

log = get_logger(__name__)

DAY_NS = 86_400 * NANOS_PER_SECOND


def backup_path(backup_dir: Path, asset_class: AssetClass, day: str) -> Path:
    """Where the ticks of one asset class and UTC day live (``.gz`` once the day is over)."""
    return backup_dir / asset_class.value / f"{day}.csv"


def _day_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


class CsvBackupWriter:
    """Appends rows to the current day's file of one asset class."""

    def __init__(
        self,
        backup_dir: Path,
        asset_class: AssetClass,
        retention_days: int = 0,
        compress: bool = True,
    ) -> None:
        self.folder = backup_dir / asset_class.value
        self._dir = backup_dir
        self._asset_class = asset_class
        self._retention_days = retention_days
        self._compress = compress
        self._day: str | None = None
        self._fd = -1
        self.path: Path | None = None
        self.size = 0  # bytes of whole rows in the current file
        self.rows_written = 0
        self._housekeeper: threading.Thread | None = None
        self._tidy_lock = threading.Lock()
        self._tidy_wanted = False
        self._tidy_running = False
        self._tidy_today = ""
        # The file being re-published from (see sink.Spill): neither it nor any later day is
        # gzipped while the re-publishing reads them.
        self.keep_uncompressed: Path | None = None

    def append(self, day: str, rows: list[bytes]) -> int:
        """Write rows of one day at once, handed to the OS; returns the offset of the first.

        Raises ``OSError`` (nothing of the batch is left in the file) when the write fails.
        """
        if day != self._day:
            self._rotate(day)
        data = b"".join(rows)
        start = self.size
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write: the rest, or the error that stopped it
                written += os.write(self._fd, data[written:])
        except OSError:
            # Cut a partial row off so the file stays whole rows, and the next batch appends.
            try:
                os.ftruncate(self._fd, start)
            except OSError as exc:  # pragma: no cover - cannot even truncate
                log.error("backup_truncate_failed", error=str(exc), path=str(self.path))
            raise
        self.size += len(data)
        self.rows_written += len(rows)
        return start

    def _rotate(self, day: str) -> None:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{day}.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(fd).st_size
        if size == 0:
            header = header_line()
            os.write(fd, header)
            size = len(header)
        self._fd, self._day, self.path, self.size = fd, day, path, size
        self.housekeeping()

    def housekeeping(self) -> None:
        """Gzip finished days and delete expired ones, in the background (files can be big)."""
        with self._tidy_lock:
            self._tidy_wanted = True
            # The day being written now: it and later days are never compressed.
            self._tidy_today = self._day or utc_date(time.time_ns())
            if self._tidy_running:
                return  # the running thread goes round once more
            self._tidy_running = True
            self._housekeeper = threading.Thread(
                target=self._tidy_while_wanted, name="backup-housekeeping", daemon=True
            )
            self._housekeeper.start()

    def _tidy_while_wanted(self) -> None:
        while True:
            with self._tidy_lock:
                if not self._tidy_wanted:
                    self._tidy_running = False
                    return
                self._tidy_wanted = False
                today = self._tidy_today
            self._tidy(today)

    def _tidy(self, today: str) -> None:
        expired_before = (
            utc_date(time.time_ns() - self._retention_days * DAY_NS)
            if self._retention_days > 0
            else ""
        )
        keep = self.keep_uncompressed
        for path in sorted(self.folder.glob("*.csv*")):
            day = _day_of(path)
            try:
                if day < expired_before:
                    path.unlink()
                    log.info("backup_expired", path=str(path))
                elif (
                    self._compress
                    and path.suffix == ".csv"
                    and day < today
                    and (keep is None or path.name < keep.name)
                ):
                    _gzip(path)
            except OSError as exc:
                log.warning("backup_housekeeping_failed", path=str(path), error=str(exc))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._day = -1, None


def _gzip(path: Path) -> None:
    target = path.with_suffix(".csv.gz")
    partial = target.with_suffix(".gz.partial")
    with path.open("rb") as src:
        if target.exists():
            # The day was archived before: keep the archive and add these rows as one more
            # gzip member (readers see one stream), without a second header line.
            shutil.copyfile(target, partial)
            src.readline()
            mode = "ab"
        else:
            mode = "wb"
        with gzip.GzipFile(partial, mode, compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    partial.rename(target)
    path.unlink()
    log.info("backup_compressed", path=str(target))


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _day_files(backup_dir: Path, asset_class: AssetClass, days: Iterable[str]) -> Iterator[Path]:
    for day in days:
        plain = backup_path(backup_dir, asset_class, day)
        packed = plain.with_suffix(".csv.gz")
        # Both exist when a day was written again after it was archived (the archive holds the
        # earlier rows), or when gzip was interrupted before removing the plain file (then the
        # rows are read twice: harmless, every tick is stored once).
        if packed.exists():
            yield packed
        if plain.exists():
            yield plain


def _days(since_ns: int, until_ns: int) -> list[str]:
    """The files that can hold ticks stamped in ``[since_ns, until_ns)``: their days, and one
    day either side (files are by arrival day; see the module's docstring)."""
    days = []
    cursor = since_ns - since_ns % DAY_NS - DAY_NS
    until_ns += DAY_NS
    while cursor < until_ns:
        days.append(utc_date(cursor))
        cursor += DAY_NS
    return days


def read_rows(
    backup_dir: Path,
    asset_class: AssetClass,
    since_ns: int,
    until_ns: int,
    symbols: Iterable[str] | None = None,
) -> Iterator[list[str]]:
    """Rows (cells in ``COLUMNS`` order) with ``since_ns <= ts < until_ns``, in file order;
    skips a torn last line."""
    wanted = frozenset(symbols) if symbols else None
    symbol_at, ts_at = COLUMNS.index("symbol"), COLUMNS.index("ts")
    for path in _day_files(backup_dir, asset_class, _days(since_ns, until_ns)):
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                continue
            if tuple(header) not in (COLUMNS, LEGACY_COLUMNS):
                raise ValueError(f"{path}: unexpected columns {header[:5]}…")
            for row in reader:
                # A day begun before schema version 3 has its header and rows of the legacy
                # columns, and may go on with today's rows after an upgrade: both are read.
                if len(row) != len(COLUMNS) and len(row) != len(LEGACY_COLUMNS):
                    continue  # a line cut short by a crash mid-write
                if wanted is not None and row[symbol_at] not in wanted:
                    continue
                if since_ns <= parse_rfc3339_ns(row[ts_at]) < until_ns:
                    yield row


def read_backup(
    backup_dir: Path,
    asset_class: AssetClass,
    since_ns: int,
    until_ns: int,
    symbols: Iterable[str] | None = None,
) -> Iterator[Tick]:
    """``read_rows`` as validated ticks (for people and tests; ``replay`` uses the rows)."""
    for row in read_rows(backup_dir, asset_class, since_ns, until_ns, symbols):
        yield Tick.model_validate(document_from_cells(row))


# How much of the newest backup file ``newest_ticks`` reads (its end): enough rows to find the
# newest exchange time among backfilled ticks interleaved with live ones.
TAIL_BYTES = 1 << 20


def newest_ticks(backup_dir: Path, asset_class: AssetClass) -> tuple[int, set[str]] | None:
    """The newest exchange time in the tail of the newest backup file, and the symbols there;
    None for an empty backup. What a restarted producer backfills from (``backfill``)."""
    folder = backup_dir / asset_class.value
    files = sorted(folder.glob("*.csv*"), key=lambda p: (_day_of(p), p.suffix == ".csv"))
    symbol_at, ts_at = COLUMNS.index("symbol"), COLUMNS.index("ts")
    for path in reversed(files):
        if path.suffix not in (".csv", ".gz"):
            continue
        newest, symbols = 0, set()
        for row in csv.reader(_tail_lines(path)):
            if len(row) != len(COLUMNS) or row[ts_at] == "ts":
                continue
            try:
                newest = max(newest, parse_rfc3339_ns(row[ts_at]))
            except ValueError:
                continue
            symbols.add(row[symbol_at])
        if newest:
            return newest, symbols
    return None


def _tail_lines(path: Path) -> list[str]:
    """The whole lines of the file's last ``TAIL_BYTES`` (a gzipped day is read through)."""
    if path.suffix == ".gz":
        with _open_text(path) as handle:
            tail: deque[str] = deque()
            size = 0
            for line in handle:
                tail.append(line)
                size += len(line)
                while size > TAIL_BYTES and len(tail) > 1:
                    size -= len(tail.popleft())
            return list(tail)
    with path.open("rb") as raw:
        end = raw.seek(0, os.SEEK_END)
        start = max(0, end - TAIL_BYTES)
        raw.seek(start)
        data = raw.read()
    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
    if start > 0 and lines:
        lines = lines[1:]  # began mid-row
    return [line for line in lines if line.endswith("\n")]
