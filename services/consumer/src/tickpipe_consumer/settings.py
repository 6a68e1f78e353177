"""The consumer's settings: the shared mixins plus what only the database writer needs.

Every field has a description because the README's settings table is written from them.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from tickpipe_common.settings import CommonSettings, DatabaseSettings, KafkaSettings
from tickpipe_consumer.db import check_dsn

# The continuous aggregate's refresh window (start_offset in migrations/0003_market_bars_1m.sql):
# every refresh recomputes the buckets of the last BARS_REFRESH_DAYS days from the raw ticks.
BARS_REFRESH_DAYS = 7
# Raw ticks must outlive that window, or a refresh would recompute (and so erase) the bars of
# the range retention dropped: one day more than the window.
MIN_RETENTION_DAYS = BARS_REFRESH_DAYS + 1


class ConsumerSettings(CommonSettings, KafkaSettings, DatabaseSettings):
    kafka_group_id: str = Field(
        "tickpipe-consumer",
        min_length=1,
        description="Kafka consumer group; every replica of the consumer uses the same one.",
    )
    kafka_dlq_topic: str | None = Field(
        None,
        min_length=1,
        description="Topic for messages that fail validation; empty means `<KAFKA_TOPIC>.dlq`.",
    )
    batch_max_messages: int = Field(
        5000,
        ge=1,
        le=1_000_000,
        description="A batch is written once it holds this many messages.",
    )
    batch_max_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Or once its first message is this many seconds old, whichever comes first.",
    )
    max_future_seconds: int = Field(
        300,
        ge=0,
        description="Ticks whose exchange timestamp is further ahead of the clock go to the DLQ.",
    )
    db_retry_initial_seconds: float = Field(
        0.5,
        gt=0,
        description="First wait before retrying a failed database write (doubles, jittered).",
    )
    db_retry_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait between database retries.",
    )
    db_connect_timeout_seconds: int = Field(
        5,
        ge=2,
        le=300,
        description="libpq connect_timeout for each database connection attempt.",
    )
    db_statement_timeout_seconds: int = Field(
        60,
        ge=0,
        description="Server-side statement_timeout of the writer's session; 0 disables it.",
    )
    apply_migrations: bool = Field(
        True,
        description="Apply the schema migrations at start (else run `tickpipe-consumer migrate`).",
    )
    retention_days: int = Field(
        0,
        ge=0,
        description="TimescaleDB only: drop raw ticks older than this many days; 0 keeps all. "
        f"At least {MIN_RETENTION_DAYS}: market_bars_1m re-materialises the last "
        f"{BARS_REFRESH_DAYS} days, and buckets whose ticks are gone would be emptied.",
    )
    shutdown_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM, how long to keep retrying the batch in hand before giving up "
        "(its offsets stay uncommitted, so it is read again after the restart).",
    )

    @field_validator("database_url")
    @classmethod
    def _parseable_dsn(cls, value: SecretStr) -> SecretStr:
        # Caught here, as a configuration error (exit 2 naming DATABASE_URL), rather than as
        # a psycopg traceback at the first connection attempt.
        check_dsn(value.get_secret_value())
        return value

    @field_validator("retention_days")
    @classmethod
    def _retention_outlives_bar_refresh(cls, value: int) -> int:
        if 0 < value < MIN_RETENTION_DAYS:
            raise ValueError(
                f"must be 0 (keep every tick) or at least {MIN_RETENTION_DAYS}: the 1-minute "
                f"bars are refreshed from the raw ticks of the last {BARS_REFRESH_DAYS} days, "
                "so a shorter retention would erase the bars of the dropped days"
            )
        return value

    @field_validator("kafka_dlq_topic", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        # `KAFKA_DLQ_TOPIC=` in a compose file or chart means "use the default".
        return None if value == "" else value

    @field_validator("kafka_dlq_topic")
    @classmethod
    def _dlq_differs_from_topic(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Rejected messages written back to the tick topic would be rejected again, forever.
        if value is not None and value == info.data.get("kafka_topic"):
            raise ValueError("must differ from KAFKA_TOPIC")
        return value

    @field_validator("db_retry_max_seconds")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("db_retry_initial_seconds")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least DB_RETRY_INITIAL_SECONDS ({initial})")
        return value

    @property
    def dlq_topic(self) -> str:
        return self.kafka_dlq_topic or f"{self.kafka_topic}.dlq"
