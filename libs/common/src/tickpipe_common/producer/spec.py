"""What makes one producer service different from the other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tickpipe_common.producer.settings import ProducerSettings
from tickpipe_common.schema import AssetClass


@dataclass(frozen=True)
class ProducerSpec:
    service: str
    asset_class: AssetClass
    settings_class: type[ProducerSettings]
    # (settings, url) → an alpaca-py DataStream with raw_data=True.
    make_stream: Callable[[ProducerSettings, str], Any]
    # The stream path under ALPACA_DATA_STREAM_URL for a feed, e.g. "/v2/iex".
    stream_path: Callable[[str], str]

    def stream_url(self, settings: ProducerSettings) -> str:
        return settings.alpaca_data_stream_url.rstrip("/") + self.stream_path(settings.feed)
