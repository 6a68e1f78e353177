"""Settings of producer-stocks: the common producer settings with stock defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tickpipe_common.producer.settings import CommaList, ProducerSettings


class StockProducerSettings(ProducerSettings):
    symbols: CommaList = Field(
        ("AAPL", "MSFT", "NVDA", "TSLA", "SPY"),
        description="Comma-separated stock symbols (FAKEPACA on the test feed).",
    )
    feed: Literal["iex", "sip", "delayed_sip", "test"] = Field(
        "iex", description="Stock feed: iex, sip, delayed_sip or test (/v2/<feed>)."
    )

    def allowed_channels(self) -> frozenset[str]:
        # Trade corrections and cancel/errors come with trades (Alpaca sends them to every
        # trade subscriber); trading statuses and LULD bands are channels of their own.
        return super().allowed_channels() | {"statuses", "lulds"}
