"""alpaca-py's stock stream, raw messages, pointed at the configured URL."""

from __future__ import annotations

from typing import Any

from alpaca.data.live import StockDataStream

from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.stream import apply_reconnect_policy


def stock_stream_path(feed: str) -> str:
    return f"/v2/{feed}"


def make_stock_stream(settings: ProducerSettings, url: str) -> Any:
    key, secret = settings.credentials()
    # url_override carries the feed path, so delayed_sip and test work as well as iex/sip.
    stream = StockDataStream(
        key,
        secret,
        raw_data=True,
        url_override=url,
        data_timeout=settings.stale_after_seconds,
    )
    return apply_reconnect_policy(
        stream, settings.reconnect_initial_seconds, settings.reconnect_max_seconds
    )
