from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from tests.unit.ticks import TS, back_up, bar, orderbook, quote, row, trade
from tickpipe_common.producer.csv_backup import CsvBackupWriter, read_backup
from tickpipe_common.schema import AssetClass
from tickpipe_common.timestamps import parse_rfc3339_ns, utc_date

DAY = 86_400 * 10**9
STOCK, CRYPTO = AssetClass.STOCK, AssetClass.CRYPTO


def _wait_housekeeping(writer: CsvBackupWriter) -> None:
    thread = writer._housekeeper
    if thread is not None:
        thread.join(30)


def test_rotates_by_day(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
    back_up(writer, trade(), trade(ts_ns=TS + DAY, trade_id=43))
    writer.close()
    crypto = CsvBackupWriter(tmp_path, CRYPTO, compress=False)
    back_up(crypto, bar())
    crypto.close()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv"))
    assert files == ["crypto/2024-03-01.csv", "stock/2024-03-01.csv", "stock/2024-03-02.csv"]
    assert writer.rows_written == 2
    first = (tmp_path / "stock" / "2024-03-01.csv").read_text().splitlines()
    assert first[0].startswith("schema_version,kind,asset_class,symbol,ts,")
    assert len(first) == 2


def test_round_trip_every_kind_exactly(tmp_path: Path) -> None:
    ticks = [trade(), quote(), trade(price=0.1 + 0.2, trade_id=7), trade(symbol='WEIRD,"X"')]
    writer = CsvBackupWriter(tmp_path, STOCK)
    back_up(writer, *ticks)
    crypto = [bar(), orderbook()]
    crypto_writer = CsvBackupWriter(tmp_path, CRYPTO)
    back_up(crypto_writer, *crypto)
    writer.close()
    crypto_writer.close()
    everything = (0, 2**62)
    assert list(read_backup(tmp_path, STOCK, *everything)) == ticks
    assert list(read_backup(tmp_path, CRYPTO, *everything)) == crypto


def test_reopening_appends_without_a_second_header(tmp_path: Path) -> None:
    for trade_id in (1, 2):
        writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
        back_up(writer, trade(trade_id=trade_id))
        writer.close()
    lines = (tmp_path / "stock" / "2024-03-01.csv").read_text().splitlines()
    assert len(lines) == 3


def test_time_range_and_symbols(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
    for i in range(5):
        back_up(writer, trade(ts_ns=TS + i * DAY, trade_id=i))
        back_up(writer, trade(ts_ns=TS + i * DAY, trade_id=i, symbol="MSFT"))
    writer.close()
    since = parse_rfc3339_ns("2024-03-02T00:00:00Z")
    until = parse_rfc3339_ns("2024-03-04T00:00:00Z")
    got = list(read_backup(tmp_path, STOCK, since, until, symbols=["MSFT"]))
    assert [t.trade_id for t in got] == [1, 2]
    assert {t.symbol for t in got} == {"MSFT"}


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
    back_up(writer, trade(trade_id=1), trade(trade_id=2))
    writer.close()
    path = tmp_path / "stock" / "2024-03-01.csv"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a crash in the middle of the last row
    assert [t.trade_id for t in read_backup(tmp_path, STOCK, 0, 2**62)] == [1]


def test_finished_days_are_gzipped_and_still_read(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path, STOCK)
    back_up(writer, trade(trade_id=1), trade(ts_ns=TS + DAY, trade_id=2))
    _wait_housekeeping(writer)
    writer.close()
    folder = tmp_path / "stock"
    assert sorted(p.name for p in folder.iterdir()) == ["2024-03-01.csv.gz", "2024-03-02.csv"]
    with gzip.open(folder / "2024-03-01.csv.gz", "rt") as packed:
        assert packed.read().count("\n") == 2
    assert [t.trade_id for t in read_backup(tmp_path, STOCK, 0, 2**62)] == [1, 2]


def test_a_day_written_again_after_it_was_gzipped_keeps_every_row(tmp_path: Path) -> None:
    # A clock set back across midnight: the writer returns to a day already archived.
    writer = CsvBackupWriter(tmp_path, STOCK)
    back_up(writer, trade(trade_id=1), trade(ts_ns=TS + DAY, trade_id=2))
    _wait_housekeeping(writer)
    back_up(writer, trade(trade_id=3), trade(ts_ns=TS + DAY, trade_id=4))
    _wait_housekeeping(writer)
    writer.close()
    folder = tmp_path / "stock"
    assert sorted(p.name for p in folder.iterdir()) == ["2024-03-01.csv.gz", "2024-03-02.csv"]
    with gzip.open(folder / "2024-03-01.csv.gz", "rt") as packed:
        lines = packed.read().splitlines()
    assert len(lines) == 3, "one header, two rows"
    assert lines[0].startswith("schema_version,")
    got = [t.trade_id for t in read_backup(tmp_path, STOCK, 0, 2**62)]
    assert len(got) == 4
    assert set(got) == {1, 2, 3, 4}


def test_ticks_filed_on_a_neighbouring_day_are_found(tmp_path: Path) -> None:
    # Files are by arrival day: a bar of 23:59 arrives after midnight, into the next day's file.
    writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
    late = trade(ts_ns=parse_rfc3339_ns("2024-03-01T23:59:00Z"), trade_id=7)
    writer.append("2024-03-02", [row(late)])
    writer.close()
    since = parse_rfc3339_ns("2024-03-01T00:00:00Z")
    until = parse_rfc3339_ns("2024-03-02T00:00:00Z")
    assert [t.trade_id for t in read_backup(tmp_path, STOCK, since, until)] == [7]
    assert list(read_backup(tmp_path, STOCK, until, until + DAY)) == []


def test_days_past_retention_are_deleted(tmp_path: Path) -> None:
    now = time.time_ns()
    old, recent = utc_date(now - 10 * DAY), utc_date(now - 2 * DAY)
    folder = tmp_path / "stock"
    folder.mkdir()
    for day in (old, recent):
        (folder / f"{day}.csv.gz").write_bytes(gzip.compress(b"x\n"))
    writer = CsvBackupWriter(tmp_path, STOCK, retention_days=7)
    writer.housekeeping()
    _wait_housekeeping(writer)
    assert sorted(p.name for p in folder.iterdir()) == [f"{recent}.csv.gz"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_leaves_whole_rows_and_raises(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path, STOCK, compress=False)
    back_up(writer, trade(trade_id=1))
    good = writer.size
    # Swap the descriptor for one on /dev/full, which fails every write with ENOSPC.
    full = os.open("/dev/full", os.O_WRONLY)
    real, writer._fd = writer._fd, full
    with pytest.raises(OSError, match="No space"):
        back_up(writer, trade(trade_id=2))
    writer._fd = real
    os.close(full)
    assert writer.size == good
    back_up(writer, trade(trade_id=3))  # space is back: the next batch appends
    writer.close()
    assert [t.trade_id for t in read_backup(tmp_path, STOCK, 0, 2**62)] == [1, 3]
