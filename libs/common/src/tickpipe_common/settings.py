"""Settings shared by the services, read from the environment with pydantic-settings.

Each service composes its settings class from these mixins, so one environment variable
means the same thing in every service. ``load_settings`` turns a validation error into a
message that names the variable and what to fix, and stops the service before it starts.
"""

from __future__ import annotations

import sys
from typing import Literal, NoReturn, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tickpipe_common.logging import LogFormat

_ENV_CONFIG = SettingsConfigDict(
    env_file=None,
    extra="ignore",
    case_sensitive=False,
    validate_default=True,
)


class CommonSettings(BaseSettings):
    model_config = _ENV_CONFIG

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest log level written."
    )
    log_format: LogFormat = Field(
        "auto", description="json, text, or auto (text on a terminal, JSON otherwise)."
    )
    http_host: str = Field("0.0.0.0", description="Address of the health/metrics server.")  # noqa: S104 - containers must listen on all interfaces
    http_port: int = Field(8000, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")


class KafkaSettings(BaseSettings):
    model_config = _ENV_CONFIG

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", min_length=1, description="Comma-separated Kafka bootstrap servers."
    )
    kafka_topic: str = Field("market_ticks", min_length=1, description="The tick topic.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    kafka_ssl_ca_location: str | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates."
    )


class DatabaseSettings(BaseSettings):
    model_config = _ENV_CONFIG

    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@localhost:5432/marketdata"),
        description="libpq connection string of the tick database (secret: may hold a password).",
    )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Build settings from the environment, or exit 2 with a message that says what to fix."""
    try:
        return cls()
    except ValidationError as exc:
        _exit_with(cls, exc)


def describe_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        variable = "_".join(str(p) for p in err["loc"]).upper() or "(settings)"
        lines.append(f"  {variable}: {err['msg']}")
    return lines


def _exit_with(cls: type[BaseSettings], exc: ValidationError) -> NoReturn:
    # Logging is not configured yet (its own settings may be what failed), so print.
    header = f"configuration error in {cls.__name__}; fix these environment variables:"
    print(header, file=sys.stderr)  # noqa: T201
    for line in describe_errors(exc):
        print(line, file=sys.stderr)  # noqa: T201
    raise SystemExit(2)


def environment_variables(cls: type[BaseSettings]) -> dict[str, bool]:
    """Every environment variable a settings class reads → whether it is required.

    For documentation and drift checks (README tables, deployment manifests).
    """
    prefix = str(cls.model_config.get("env_prefix") or "")
    names = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        env = alias if isinstance(alias, str) else prefix + name
        names[env.upper()] = field.is_required()
    return names
