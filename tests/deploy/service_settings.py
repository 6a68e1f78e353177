"""Which settings class each deployable service reads: the source for drift checks of the
chart and the compose file (they may set only variables that exist, and must set the required)."""

from __future__ import annotations

from pydantic_settings import BaseSettings

from tickpipe_common.settings import environment_variables
from tickpipe_consumer.settings import ConsumerSettings
from tickpipe_market_sim.settings import SimSettings
from tickpipe_producer_crypto.settings import CryptoProducerSettings
from tickpipe_producer_stocks.settings import StockProducerSettings

SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "producer-stocks": StockProducerSettings,
    "producer-crypto": CryptoProducerSettings,
    "consumer": ConsumerSettings,
    "market-sim": SimSettings,
}


def known_variables(service: str) -> set[str]:
    """Every environment variable the service reads."""
    return set(environment_variables(SERVICE_SETTINGS[service]))


def required_variables(service: str) -> set[str]:
    """The variables without a default: a deployment must set them."""
    return {
        name
        for name, required in environment_variables(SERVICE_SETTINGS[service]).items()
        if required
    }
