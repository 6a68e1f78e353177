"""alpaca-py's crypto stream, raw messages, pointed at the configured URL."""

from __future__ import annotations

from typing import Any

from alpaca.data.live import CryptoDataStream

from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.producer.stream import apply_reconnect_policy


def crypto_stream_path(feed: str) -> str:
    return f"/v1beta3/crypto/{feed}"


def make_crypto_stream(settings: ProducerSettings, url: str) -> Any:
    key, secret = settings.credentials()
    stream = CryptoDataStream(
        key,
        secret,
        raw_data=True,
        url_override=url,
        data_timeout=settings.stale_after_seconds,
    )
    return apply_reconnect_policy(
        stream, settings.reconnect_initial_seconds, settings.reconnect_max_seconds
    )
