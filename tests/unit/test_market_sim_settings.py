"""SIM_* settings: defaults, parsing, and errors that name the variable to fix."""

from __future__ import annotations

import os

import pytest

from tickpipe_common.settings import load_settings
from tickpipe_market_sim.settings import SimSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("SIM_", "LOG_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = SimSettings()
    assert (settings.host, settings.port, settings.seed) == ("0.0.0.0", 8765, 42)  # noqa: S104
    assert settings.rate_per_symbol == 5.0
    assert settings.max_rate == 2000.0
    assert settings.max_events_per_symbol == 0
    assert settings.stock_symbols == (
        "AAPL",
        "MSFT",
        "NVDA",
        "AMZN",
        "GOOGL",
        "META",
        "TSLA",
        "SPY",
        "QQQ",
        "AMD",
    )
    assert settings.crypto_symbols == ("BTC/USD", "ETH/USD", "SOL/USD", "LTC/USD", "DOGE/USD")
    assert settings.api_key is None
    assert settings.auth_timeout == 10.0
    assert (settings.symbol_limit, settings.max_connections) == (0, 0)
    assert (settings.log_level, settings.log_format) == ("INFO", "auto")


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_PORT", "0")
    monkeypatch.setenv("SIM_SEED", "7")
    monkeypatch.setenv("SIM_STOCK_SYMBOLS", " AAPL, TSLA,,AAPL ")
    monkeypatch.setenv("SIM_CRYPTO_SYMBOLS", "BTC/USD")
    monkeypatch.setenv("SIM_MAX_EVENTS_PER_SYMBOL", "100")
    monkeypatch.setenv("SIM_API_KEY", "")  # empty means unset (compose's ${X:-})
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("LOG_FORMAT", "json")
    settings = load_settings(SimSettings)
    assert (settings.port, settings.seed, settings.max_events_per_symbol) == (0, 7, 100)
    assert settings.stock_symbols == ("AAPL", "TSLA")
    assert settings.crypto_symbols == ("BTC/USD",)
    assert settings.api_key is None
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_credentials_come_as_a_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_API_KEY", "key")
    monkeypatch.setenv("SIM_API_SECRET", "hunter2")
    settings = SimSettings()
    assert settings.api_secret is not None
    assert settings.api_secret.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SIM_PORT": "http"}, "SIM_PORT"),
        ({"SIM_PORT": "70000"}, "SIM_PORT"),
        ({"SIM_RATE_PER_SYMBOL": "0"}, "SIM_RATE_PER_SYMBOL"),
        ({"SIM_MAX_EVENTS_PER_SYMBOL": "-1"}, "SIM_MAX_EVENTS_PER_SYMBOL"),
        ({"SIM_STOCK_SYMBOLS": " , "}, "SIM_STOCK_SYMBOLS"),
        ({"SIM_CRYPTO_SYMBOLS": "BTCUSD"}, "SIM_CRYPTO_SYMBOLS"),
        ({"SIM_API_KEY": "key"}, "SIM_API_SECRET"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as excinfo:
        load_settings(SimSettings)
    assert excinfo.value.code == 2
    assert named in capsys.readouterr().err
