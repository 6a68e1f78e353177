"""Settings of producer-crypto: the common producer settings with crypto defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tickpipe_common.producer.settings import CommaList, ProducerSettings


class CryptoProducerSettings(ProducerSettings):
    symbols: CommaList = Field(
        ("BTC/USD", "ETH/USD", "SOL/USD"), description="Comma-separated crypto pairs."
    )
    feed: Literal["us"] = Field("us", description="Crypto feed (/v1beta3/crypto/<feed>).")

    def allowed_channels(self) -> frozenset[str]:
        return super().allowed_channels() | {"orderbooks"}
