from __future__ import annotations

from tests.unit.ticks import orderbook, quote, trade
from tickpipe_common.producer.price_filter import PriceChangeFilter


def test_publishes_only_changes_per_symbol_and_kind() -> None:
    f = PriceChangeFilter()
    assert f.should_publish(trade(price=1.0))
    assert not f.should_publish(trade(price=1.0, trade_id=2))
    assert f.should_publish(trade(price=1.0, symbol="MSFT"))  # other symbol
    assert f.should_publish(quote())  # other kind, same symbol
    assert f.should_publish(trade(price=1.01, trade_id=3))
    assert f.should_publish(trade(price=1.0, trade_id=4))  # back to an earlier price is a change
    assert not f.should_publish(quote(ask_size=9.0))  # sizes are not prices
    assert f.should_publish(quote(ask_price=190.0))


def test_orderbooks_always_pass() -> None:
    f = PriceChangeFilter()
    assert f.should_publish(orderbook())
    assert f.should_publish(orderbook())


def test_every_tick_mode() -> None:
    f = PriceChangeFilter(every_tick=True)
    assert all(f.should_publish(trade(trade_id=i)) for i in range(5))
