"""producer-crypto: Alpaca crypto trades, quotes, bars and orderbooks → Kafka ``market_ticks``."""

from __future__ import annotations

import sys

from tickpipe_common.producer.cli import producer_main
from tickpipe_common.producer.spec import ProducerSpec
from tickpipe_common.schema import AssetClass
from tickpipe_producer_crypto.settings import CryptoProducerSettings
from tickpipe_producer_crypto.stream import crypto_stream_path, make_crypto_stream

SPEC = ProducerSpec(
    service="producer-crypto",
    asset_class=AssetClass.CRYPTO,
    settings_class=CryptoProducerSettings,
    make_stream=make_crypto_stream,
    stream_path=crypto_stream_path,
)


def main() -> None:
    sys.exit(producer_main(SPEC))


if __name__ == "__main__":
    main()
