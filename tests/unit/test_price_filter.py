from __future__ import annotations

from tickpipe_common.producer.price_filter import PriceChangeFilter


def test_publishes_only_changes_per_symbol_and_kind() -> None:
    f = PriceChangeFilter()
    assert f.should_publish("AAPL", "trade", (1.0,))
    assert not f.should_publish("AAPL", "trade", (1.0,))
    assert f.should_publish("MSFT", "trade", (1.0,))  # other symbol
    assert f.should_publish("AAPL", "quote", (1.0, 1.1))  # other kind, same symbol
    assert f.should_publish("AAPL", "trade", (1.01,))
    assert f.should_publish("AAPL", "trade", (1.0,))  # back to an earlier price is a change
    assert not f.should_publish("AAPL", "quote", (1.0, 1.1))
    assert f.should_publish("AAPL", "quote", (1.0, 190.0))


def test_orderbooks_always_pass() -> None:
    f = PriceChangeFilter()
    assert f.should_publish("BTC/USD", "orderbook", None)
    assert f.should_publish("BTC/USD", "orderbook", None)


def test_every_tick_mode() -> None:
    f = PriceChangeFilter(every_tick=True)
    assert all(f.should_publish("AAPL", "trade", (1.0,)) for _ in range(5))
