from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from tickpipe_producer_crypto.settings import CryptoProducerSettings
from tickpipe_producer_stocks.settings import StockProducerSettings

SIM = {"ALPACA_DATA_STREAM_URL": "ws://127.0.0.1:8765"}


def _env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_defaults_and_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {**SIM, "SYMBOLS": " AAPL, msft ,,", "CHANNELS": "trades"})
    s = StockProducerSettings()
    assert s.symbols == ("AAPL", "msft")
    assert s.channels == ("trades",)
    assert s.feed == "iex"
    assert s.publish_mode == "on_change"
    assert s.credentials() == ("tickpipe-sim", "tickpipe-sim")


def test_live_keys_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {"ALPACA_API_KEY": "PKTESTKEY", "ALPACA_SECRET_KEY": "s3cr3t-value"})
    s = StockProducerSettings()
    assert s.credentials() == ("PKTESTKEY", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(s)
    assert "s3cr3t-value" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ALPACA_API_KEY/ALPACA_SECRET_KEY are unset"),
        (
            {"ALPACA_API_KEY": "", "ALPACA_SECRET_KEY": " "},
            "ALPACA_API_KEY/ALPACA_SECRET_KEY are unset",
        ),
        ({"ALPACA_API_KEY": "k"}, "go together"),
        ({**SIM, "CHANNELS": "trades,news"}, "unknown ['news']"),
        ({**SIM, "CHANNELS": "orderbooks"}, "unknown ['orderbooks']"),
        ({**SIM, "SYMBOLS": " , "}, "at least one symbol"),
        ({**SIM, "FEED": "nasdaq"}, "feed"),
        ({**SIM, "PUBLISH_MODE": "sometimes"}, "publish_mode"),
        ({**SIM, "STALE_AFTER_SECONDS": "0"}, "stale_after_seconds"),
    ],
)
def test_bad_configuration_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _env(monkeypatch, env)
    with pytest.raises(ValidationError, match=r"(?i)" + message.replace("[", r"\[")):
        StockProducerSettings()


def test_crypto_allows_orderbooks(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, {**SIM, "CHANNELS": "trades,orderbooks"})
    s = CryptoProducerSettings()
    assert s.channels == ("trades", "orderbooks")
    assert s.symbols == ("BTC/USD", "ETH/USD", "SOL/USD")


def test_service_exits_2_naming_the_variable() -> None:
    env = {"PATH": "/usr/bin:/bin", **SIM, "PUBLISH_MODE": "sometimes"}
    done = subprocess.run(
        [sys.executable, "-m", "tickpipe_producer_stocks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "PUBLISH_MODE" in done.stderr
