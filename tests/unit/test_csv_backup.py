from __future__ import annotations

from pathlib import Path

from tests.unit.ticks import TS, bar, orderbook, quote, trade
from tickpipe_common.producer.csv_backup import CsvBackupWriter, read_backup
from tickpipe_common.schema import AssetClass
from tickpipe_common.timestamps import parse_rfc3339_ns

DAY = 86_400 * 10**9


def test_rotates_by_day_and_asset_class(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path)
    writer.write(trade())
    writer.write(trade(ts_ns=TS + DAY, trade_id=43))
    writer.write(bar())
    writer.close()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv"))
    assert files == ["crypto/2024-03-01.csv", "stock/2024-03-01.csv", "stock/2024-03-02.csv"]
    assert writer.rows_written == 3
    first = (tmp_path / "stock" / "2024-03-01.csv").read_text().splitlines()
    assert first[0].startswith("schema_version,kind,asset_class,symbol,ts,")
    assert len(first) == 2


def test_round_trip_every_kind_exactly(tmp_path: Path) -> None:
    ticks = [trade(), quote(), trade(price=0.1 + 0.2, trade_id=7), trade(symbol='WEIRD,"X"')]
    writer = CsvBackupWriter(tmp_path)
    for tick in ticks:
        writer.write(tick)
    crypto = [bar(), orderbook()]
    for tick in crypto:
        writer.write(tick)
    writer.close()
    everything = (0, 2**62)
    assert list(read_backup(tmp_path, AssetClass.STOCK, *everything)) == ticks
    assert list(read_backup(tmp_path, AssetClass.CRYPTO, *everything)) == crypto


def test_reopening_appends_without_a_second_header(tmp_path: Path) -> None:
    for trade_id in (1, 2):
        writer = CsvBackupWriter(tmp_path)
        writer.write(trade(trade_id=trade_id))
        writer.close()
    lines = (tmp_path / "stock" / "2024-03-01.csv").read_text().splitlines()
    assert len(lines) == 3


def test_time_range_and_symbols(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path)
    for i in range(5):
        writer.write(trade(ts_ns=TS + i * DAY, trade_id=i))
        writer.write(trade(ts_ns=TS + i * DAY, trade_id=i, symbol="MSFT"))
    writer.close()
    since = parse_rfc3339_ns("2024-03-02T00:00:00Z")
    until = parse_rfc3339_ns("2024-03-04T00:00:00Z")
    got = list(read_backup(tmp_path, AssetClass.STOCK, since, until, symbols=["MSFT"]))
    assert [t.trade_id for t in got] == [1, 2]
    assert {t.symbol for t in got} == {"MSFT"}


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    writer = CsvBackupWriter(tmp_path)
    writer.write(trade(trade_id=1))
    writer.write(trade(trade_id=2))
    writer.close()
    path = tmp_path / "stock" / "2024-03-01.csv"
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a crash in the middle of the last row
    assert [t.trade_id for t in read_backup(tmp_path, AssetClass.STOCK, 0, 2**62)] == [1]
