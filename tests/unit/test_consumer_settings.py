"""Consumer settings: defaults, overrides, and configuration errors that name the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tickpipe_common.settings import load_settings
from tickpipe_consumer.migrations import load_migrations
from tickpipe_consumer.settings import BARS_REFRESH_DAYS, MIN_RETENTION_DAYS, ConsumerSettings

_OURS = (
    "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_TOPIC",
    "BATCH_MAX_MESSAGES",
    "BATCH_MAX_SECONDS",
    "MAX_FUTURE_SECONDS",
    "DB_RETRY_INITIAL_SECONDS",
    "DB_RETRY_MAX_SECONDS",
    "APPLY_MIGRATIONS",
    "RETENTION_DAYS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _OURS:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = ConsumerSettings()
    assert s.kafka_group_id == "tickpipe-consumer"
    assert s.kafka_topic == "market_ticks"
    assert s.dlq_topic == "market_ticks.dlq"
    assert s.batch_max_messages == 5000
    assert s.batch_max_seconds == 0.5
    assert s.max_future_seconds == 300
    assert s.apply_migrations is True
    assert s.retention_days == 0
    assert s.db_retry_initial_seconds <= s.db_retry_max_seconds


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_TOPIC", "ticks")
    monkeypatch.setenv("BATCH_MAX_MESSAGES", "100")
    monkeypatch.setenv("BATCH_MAX_SECONDS", "0.05")
    monkeypatch.setenv("APPLY_MIGRATIONS", "false")
    s = ConsumerSettings()
    assert s.dlq_topic == "ticks.dlq"
    assert (s.batch_max_messages, s.batch_max_seconds, s.apply_migrations) == (100, 0.05, False)
    monkeypatch.setenv("KAFKA_DLQ_TOPIC", "dead-ticks")
    assert ConsumerSettings().dlq_topic == "dead-ticks"
    monkeypatch.setenv("KAFKA_DLQ_TOPIC", "")
    assert ConsumerSettings().dlq_topic == "ticks.dlq"


def test_every_field_is_described() -> None:
    # The README's settings table is generated from these descriptions.
    missing = [n for n, f in ConsumerSettings.model_fields.items() if not f.description]
    assert missing == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_MAX_MESSAGES", "0"),
        ("BATCH_MAX_MESSAGES", "many"),
        ("BATCH_MAX_SECONDS", "-1"),
        ("MAX_FUTURE_SECONDS", "-5"),
        ("APPLY_MIGRATIONS", "perhaps"),
        ("RETENTION_DAYS", "-1"),
        ("RETENTION_DAYS", "7"),  # shorter than the 1-minute bars' refresh window
        ("DATABASE_URL", "not-a-url"),
        ("KAFKA_DLQ_TOPIC", "market_ticks"),
        ("DB_RETRY_MAX_SECONDS", "0.1"),
    ],
)
def test_bad_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as caught:
        load_settings(ConsumerSettings)
    assert caught.value.code == 2
    assert f"  {variable}:" in capsys.readouterr().err


def _run_cli(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "tickpipe_consumer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exits_2_on_bad_setting() -> None:
    result = _run_cli({"BATCH_MAX_SECONDS": "soon"})
    assert result.returncode == 2, result.stderr
    assert "BATCH_MAX_SECONDS" in result.stderr


@pytest.mark.parametrize("command", ["run", "migrate"])
def test_cli_exits_2_naming_database_url_that_is_not_one(command: str) -> None:
    result = _run_cli({"DATABASE_URL": "not-a-url"}, command)
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_database_url_is_not_echoed() -> None:
    # libpq's own parse error quotes the string, which may hold a password.
    result = _run_cli({"DATABASE_URL": "user:s3cret@somewhere"})
    assert result.returncode == 2, result.stderr
    assert "s3cret" not in result.stderr


def test_retention_outlives_the_bars_refresh_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_DAYS", str(MIN_RETENTION_DAYS))
    assert ConsumerSettings().retention_days == MIN_RETENTION_DAYS
    refresh = re.search(r"start_offset => INTERVAL '(\d+) days'", load_migrations()[2].sql.decode())
    assert refresh is not None
    assert int(refresh.group(1)) == BARS_REFRESH_DAYS == MIN_RETENTION_DAYS - 1


def test_cli_exits_2_on_inconsistent_kafka_security() -> None:
    # Valid one by one, contradictory together: caught when the Kafka configuration is built,
    # before anything connects.
    result = _run_cli({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "HTTP_PORT": "0"}, "run")
    assert result.returncode == 2, result.stderr
    assert "KAFKA_SASL_MECHANISM" in result.stderr


def test_cli_rejects_unknown_command() -> None:
    result = _run_cli({}, "frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
