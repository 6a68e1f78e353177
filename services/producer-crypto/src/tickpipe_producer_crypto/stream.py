"""alpaca-py's crypto stream, pointed at the configured URL."""

from __future__ import annotations

from typing import Any

from alpaca.data.live import CryptoDataStream

from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.stream import build_alpaca_stream


def crypto_stream_path(feed: str) -> str:
    return "/v1beta3/crypto/" + feed


def make_crypto_stream(settings: ProducerSettings, url: str) -> Any:
    return build_alpaca_stream(CryptoDataStream, settings, url)
