"""producer-stocks: Alpaca stock trades, quotes and bars → Kafka ``market_ticks``."""

from __future__ import annotations

import sys

from tickpipe_common.producer.cli import producer_main
from tickpipe_common.producer.spec import ProducerSpec
from tickpipe_common.schema import AssetClass
from tickpipe_producer_stocks.settings import StockProducerSettings
from tickpipe_producer_stocks.stream import make_stock_stream, stock_stream_path

SPEC = ProducerSpec(
    service="producer-stocks",
    asset_class=AssetClass.STOCK,
    settings_class=StockProducerSettings,
    make_stream=make_stock_stream,
    stream_path=stock_stream_path,
)


def main() -> None:
    sys.exit(producer_main(SPEC))


if __name__ == "__main__":
    main()
