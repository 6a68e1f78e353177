"""Where ``tickpipe status`` looks: settings from the environment (pydantic-settings).

The defaults are the local stacks' addresses: the host ports come from their one definition,
``deploy/ports.env`` (``tickpipe_localstack.ports``), each overridden by its environment
variable (``TICKPIPE_PG_PORT``, ``TICKPIPE_CONSUMER_PORT``, ...) as in ``stack.sh`` and
``run.sh``. ``DATABASE_URL`` replaces the local database's address; command-line options
replace any of it.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from tickpipe_localstack.ports import PORTS_FILE

LOCAL_HOST = "127.0.0.1"
LOCAL_DATABASE = "marketdata"


class StatusSettings(BaseSettings):
    # The ports file is a dotenv file of defaults; real environment variables win over it.
    model_config = SettingsConfigDict(
        env_prefix="TICKPIPE_",
        env_file=PORTS_FILE,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    sim_port: int = Field(ge=1, le=65535, description="market-sim's port.")
    producer_stocks_port: int = Field(ge=1, le=65535, description="producer-stocks' HTTP port.")
    producer_crypto_port: int = Field(ge=1, le=65535, description="producer-crypto's HTTP port.")
    consumer_port: int = Field(ge=1, le=65535, description="The consumer's HTTP port.")
    pg_port: int = Field(ge=1, le=65535, description="PostgreSQL's port.")
    database_url: SecretStr | None = Field(
        None,
        validation_alias="DATABASE_URL",
        description="Database to read the newest ticks from (else the local stack's).",
    )

    def targets(self) -> dict[str, str]:
        """Service name → base URL of its /metrics and /readyz."""
        ports = {
            "market-sim": self.sim_port,
            "producer-stocks": self.producer_stocks_port,
            "producer-crypto": self.producer_crypto_port,
            "consumer": self.consumer_port,
        }
        return {name: f"http://{LOCAL_HOST}:{port}" for name, port in ports.items()}

    def local_database_url(self) -> str:
        return f"postgresql://postgres@{LOCAL_HOST}:{self.pg_port}/{LOCAL_DATABASE}"

    def dsn(self) -> str:
        """``DATABASE_URL`` when set, else the local stack's database."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.local_database_url()
