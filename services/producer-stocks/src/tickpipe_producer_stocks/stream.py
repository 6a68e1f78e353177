"""alpaca-py's stock stream, pointed at the configured URL."""

from __future__ import annotations

from typing import Any

from alpaca.data.live import StockDataStream

from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.stream import build_alpaca_stream


def stock_stream_path(feed: str) -> str:
    return "/v2/" + feed


def make_stock_stream(settings: ProducerSettings, url: str) -> Any:
    return build_alpaca_stream(StockDataStream, settings, url)
