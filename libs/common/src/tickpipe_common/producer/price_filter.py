"""The seed's behaviour: publish a tick only when its price moved (per symbol and kind)."""

from __future__ import annotations

from tickpipe_common.schema import Tick, TickKind


class PriceChangeFilter:
    """Remembers the last published price signature of each (symbol, kind)."""

    def __init__(self, every_tick: bool = False) -> None:
        self._every_tick = every_tick
        self._last: dict[tuple[str, TickKind], tuple[float | None, ...]] = {}

    def should_publish(self, tick: Tick) -> bool:
        if self._every_tick:
            return True
        signature = tick.price_signature()
        if signature is None:
            return True
        key = (tick.symbol, tick.kind)
        if self._last.get(key) == signature:
            return False
        self._last[key] = signature
        return True
